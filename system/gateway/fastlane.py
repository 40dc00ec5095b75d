"""The stream's fast lane on uvicorn's httptools cycle: the head written directly, the body piped."""

from __future__ import annotations

from typing import Any

# HEADER_VALUE_RE: the bytes uvicorn refuses in a header value (the names written here are ours)
from uvicorn.protocols.http.httptools_impl import HEADER_VALUE_RE, STATUS_LINE


def start_chunked(cycle: Any, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
    """Write the head of a chunked response on uvicorn's httptools cycle `cycle`, as its `send` of
    `http.response.start` would (default headers first, `connection: close` when the connection will not be
    kept, `transfer-encoding: chunked`), and mark the cycle started and chunked so that its later sends
    frame the body. uvicorn's `send` checks every name and value with two regexes and parses each header
    for its meaning: ~10 us per response warm, most of the head's cost. Here the names are the relay's own
    lower-case literals and all values are checked with one search. False (nothing written) when `cycle`
    is not such a cycle, has started already, or a value would be refused: then the caller sends the start
    message as usual (and uvicorn reports the bad value as it always has)."""
    try:
        if cycle.disconnected or cycle.response_started or cycle.chunked_encoding is not None:
            return False  # (a client gone: uvicorn's send drops the message)
        if status in (204, 304) or cycle.scope["method"] == "HEAD":
            return False  # no body allowed: uvicorn does not use chunked framing there
        defaults, transport, keep_alive = cycle.default_headers, cycle.transport, cycle.keep_alive
    except AttributeError:
        return False
    all_headers = [*defaults, *headers]
    if HEADER_VALUE_RE.search(b"".join([v for _, v in all_headers])):
        return False
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    cycle.chunked_encoding = True
    cycle.expected_content_length = 0
    head = [STATUS_LINE[status], *(b"%s: %s\r\n" % (k, v) for k, v in all_headers)]
    if not keep_alive:
        head.append(b"connection: close\r\n")
    head.append(b"transfer-encoding: chunked\r\n\r\n")
    transport.write(b"".join(head))
    return True


async def pipe_stream(send: Any, resp: Any, progress: Any) -> bool:
    """The stream's fast lane: the raw upstream client writes each upstream read straight to uvicorn's
    transport for this connection (chunked framing as uvicorn's `send` would write it), from the socket
    callback; no coroutine runs per chunk. Only when `send` is uvicorn's httptools cycle, which has sent the
    head with chunked encoding; False (nothing done) otherwise, and the caller loops over `readany`.
    The loop time of each read goes to `progress.piped.last_io` while it pipes (the relay's read-timeout
    watchdog reads it), then to `progress.last_io`."""
    pipe = getattr(resp, "pipe", None)
    cycle = getattr(send, "__self__", None)
    if pipe is None or getattr(cycle, "chunked_encoding", None) is not True:
        return False
    await pipe(cycle.transport, cycle, cycle.flow, progress)
    if resp.terminated:
        # the terminating chunk already went out with the last bytes (see upstream._Conn.data_received): the
        # relay's final empty `send` still completes uvicorn's cycle (keep-alive, next request) but writes
        # nothing, as for a response whose content-length is reached
        cycle.chunked_encoding = False
        cycle.expected_content_length = 0
    return True
