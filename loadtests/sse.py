"""One streamed OpenAI request over geventhttpclient, timed line by line as the bytes arrive.

Why line by line: `iter_content(1024)` waits until 1 KB has arrived, which on a token stream means
~100 ms of extra TTFT; `readline` returns as soon as one SSE line is complete. Times are perf_counter
deltas from just before the request is sent. The lines are interpreted by the shared reader
`system.sse.SSEReader` (definitions of TTFT, chunk gaps, completion and tokens per chunk are there);
TPOT = (E2E - TTFT) / (output tokens - 1) is filled by RequestRecord.finish_derived().
"""

from __future__ import annotations

import json
import time
from typing import Any

from geventhttpclient import HTTPClient

from system.records import CUT_ERROR, OUTCOME_CUT, RequestRecord
from system.sse import MAX_ERROR_CHARS, SSEReader, apply_router_headers, error_message


def stream_request(
    client: HTTPClient, path: str, body: dict[str, Any], rec: RequestRecord, prompt_text: str
) -> bool:
    """Send `body` to `path`, read the SSE stream, fill `rec` (times, tokens, headers, truth, outcome).

    Returns False when the connection is in an unknown state and the caller must drop it. When the
    greenlet is killed (the step ended: GreenletExit) `rec` is filled with what arrived so far, marked
    `cut`, and the exception propagates.
    """
    payload = json.dumps(body).encode()
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream",
        "Accept-Encoding": "identity",  # a compressed stream would be buffered
        "x-request-id": rec.request_id,
    }
    rec.start_ts = time.time()
    reader = SSEReader(time.perf_counter())
    try:
        try:
            resp = client.request("POST", path, body=payload, headers=headers)
        except Exception as e:
            reader.last_t = time.perf_counter()
            rec.error = f"{type(e).__name__}: {e}"[:MAX_ERROR_CHARS]
            return False
        rec.status = int(resp.status_code)
        apply_router_headers(rec, resp.get)
        if rec.status != 200:
            rec.error = f"HTTP {rec.status}: {error_message(resp.read())}"
            return True
        try:
            while not (reader.done or reader.error):
                line = resp.readline(b"\n")
                t = time.perf_counter()
                if not line:
                    reader.last_t = t
                    break  # end of body
                reader.feed_line(line, t)
            if reader.done:
                resp.read()  # the chunked-encoding terminator: completes the message, frees the socket
        except Exception as e:
            reader.last_t = time.perf_counter()
            rec.error = (
                f"stream interrupted after {len(reader.chunk_times)} chunk(s): {type(e).__name__}: {e}"
            )
            rec.error = rec.error[:MAX_ERROR_CHARS]
            return False
        if reader.error:
            rec.error = reader.error
            return False
        if not reader.complete:
            rec.error = f"stream ended without [DONE] after {len(reader.chunk_times)} chunk(s)"
            return False
        if reader.first_t is None:
            rec.error = "stream carried no generated text"
            return True
        rec.success = True
        return True
    except BaseException:
        # killed by the end of the step (GreenletExit): keep what arrived, say so
        reader.last_t = time.perf_counter()
        rec.success = False
        rec.outcome = OUTCOME_CUT
        rec.error = CUT_ERROR
        raise
    finally:
        reader.fill_record(rec, prompt_text)
