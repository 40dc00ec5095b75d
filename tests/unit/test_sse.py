"""The shared SSE reader: content chunks, tokens per chunk, usage, truth, errors, byte-split input."""

from __future__ import annotations

import json
import math

from system.records import RecordWriter, RequestRecord, read_records
from system.sse import SSEReader, scale_to_total


def _event(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


BODY = (
    _event({"choices": [{"delta": {"role": "assistant"}}]})  # role only: not content
    + _event({"choices": [{"delta": {"content": "the "}}]})
    + b": keep-alive comment\n\n"
    + _event({"choices": [{"delta": {"content": "of and "}}]})
    + _event({"choices": [{"delta": {"content": "to "}, "finish_reason": "length"}]})
    + _event(
        {
            "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": 4},
            "sim_timing": {
                "arrival_ts": 1.0,
                "first_token_ts": 2.0,
                "last_token_ts": 3.0,
                "output_tokens": 4,
            },
        }
    )
    + b"data: [DONE]\n\n"
)


def test_lines_and_arbitrary_byte_chunks_read_the_same() -> None:
    by_line = SSEReader(0.0)
    for i, line in enumerate(BODY.split(b"\n")):
        by_line.feed_line(line, float(i))
    by_bytes = SSEReader(0.0)
    for i in range(0, len(BODY), 7):  # events split mid-line
        by_bytes.feed(BODY[i : i + 7], float(i))
    by_bytes.end(1e9)
    for r in (by_line, by_bytes):
        assert r.complete and r.done and r.finished and not r.error
        assert r.text == "the of and to "
        assert len(r.chunk_times) == 3  # the role chunk does not count
        assert r.chunk_tokens == [1, 2, 1] and r.output_tokens == 4 and r.tokens_per_chunk() == [1, 2, 1]
        assert r.timing is not None and r.timing["first_token_ts"] == 2.0


def test_lazy_reader_keeps_ttft_and_totals_and_parses_the_tail() -> None:
    full, lazy = SSEReader(0.0), SSEReader(0.0, lazy=True)
    for r in (full, lazy):
        for i in range(0, len(BODY), 7):
            r.feed(BODY[i : i + 7], float(i))
        r.end(1e9)
    assert lazy.complete and lazy.ttft_s == full.ttft_s
    assert lazy.chunks == full.chunks == 3  # the usage event after the content was discounted at the end
    assert lazy.output_tokens == 4 and lazy.timing == full.timing and lazy.finished
    assert len(lazy.chunk_times) == 1  # only the first chunk is timed
    bad = SSEReader(0.0, lazy=True)
    bad.feed(b'data: {"choices":[{"text":"a"}]}\n\ndata: {"error": {"message": "late boom"}}\n\n', 1.0)
    bad.end(2.0)
    assert bad.error == "error event in stream: late boom" and not bad.complete


def test_fill_record_times_tokens_and_truth() -> None:
    r = SSEReader(10.0)
    for t, line in zip(
        [10.0, 10.5, 10.5, 10.7, 10.7, 11.0, 11.0, 11.2, 11.2, 11.3, 11.3, 11.4],
        BODY.split(b"\n"),
        strict=False,
    ):
        r.feed_line(line, t)
    rec = RequestRecord(start_ts=100.0)
    r.fill_record(rec, "prompt")
    # line times: the role event 10.0, "the " 10.5, comment 10.7, "of and " 11.0, "to " 11.2, usage, [DONE]
    assert math.isclose(rec.ttft_s, 0.5) and len(rec.itl_s) == 2
    assert math.isclose(rec.itl_s[0], 0.5) and math.isclose(rec.itl_s[1], 0.2)
    assert rec.output_tokens == 4 and rec.tokens_from_usage and rec.prompt_tokens == 5
    assert sum(rec.chunk_tokens) == rec.output_tokens
    assert rec.gt_first_token_ts == 2.0 and rec.gt_output_tokens == 4
    assert math.isclose(rec.end_ts, 100.0 + rec.e2e_s)


def test_usage_rescales_chunk_tokens_and_no_usage_counts_chunks() -> None:
    assert scale_to_total([1, 1, 1, 1], 8) == [2, 2, 2, 2]
    assert sum(scale_to_total([3, 1, 1], 4)) == 4
    assert scale_to_total([0, 0, 0], 4) == [2, 1, 1]
    r = SSEReader(0.0)
    for line in (
        b'data: {"choices":[{"text":"alpha beta"}]}',
        b'data: {"choices":[{"text":"x","finish_reason":"stop"}]}',
    ):
        r.feed_line(line, 1.0)
    rec = RequestRecord(start_ts=0.0)
    r.fill_record(rec, "p")
    assert r.complete and not r.done  # a finish_reason without [DONE] (transformers serve) completes
    assert rec.output_tokens == 2 and not rec.tokens_from_usage  # one token per chunk without usage
    assert sum(rec.chunk_tokens) == 2


def test_error_event_and_invalid_json_stop_the_stream() -> None:
    r = SSEReader(0.0)
    r.feed(b'data: {"error": {"message": "boom", "code": 500}}\n\ndata: {"choices":[{"text":"a"}]}\n', 1.0)
    assert r.error == "error event in stream: boom" and not r.chunk_times and not r.complete
    r = SSEReader(0.0)
    r.feed_line(b"data: {nope", 1.0)
    assert r.error.startswith("invalid JSON in stream")


def test_records_roundtrip_outcome_and_chunk_tokens_and_old_files(tmp_path) -> None:
    with RecordWriter(tmp_path / "records-a.csv") as w:
        for i, (ok, outcome) in enumerate([(True, ""), (False, ""), (False, "cut")]):
            rec = RequestRecord(request_id=f"r{i}", success=ok, outcome=outcome, chunk_tokens=[1, 2])
            rec.finish_derived()
            w.write(rec)
    df = read_records([tmp_path / "records-a.csv"])
    assert df["outcome"].tolist() == ["ok", "error", "cut"]
    assert df["chunk_tokens"].tolist() == [[1, 2]] * 3
    # a file written before `outcome`/`chunk_tokens` existed: outcome derived from success
    old = tmp_path / "records-old.csv"
    with RecordWriter(old) as w:
        for i, ok in enumerate([True, False]):
            w.write(RequestRecord(request_id=f"o{i}", success=ok))
    import pandas as pd

    pd.read_csv(old).drop(columns=["outcome", "chunk_tokens"]).to_csv(old, index=False)
    df = read_records([old])
    assert df["outcome"].tolist() == ["ok", "error"] and df["chunk_tokens"].tolist() == [[], []]
