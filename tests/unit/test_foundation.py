"""Foundation: tokenizer determinism, record round trip (incl. torn rows), ServerProcess fail-fast."""

from __future__ import annotations

import math
import sys
import time

import pytest

from system.processes import ServerProcess, ServerStartError, free_port
from system.records import RecordWriter, RequestRecord, read_records, record_files
from system.tokens import count_tokens, synthetic_token


def test_count_tokens_is_deterministic_and_splits_words_and_punct() -> None:
    assert count_tokens("") == 0
    assert count_tokens("hi") == 1
    assert count_tokens("hello") == 2  # 5 chars -> 2 tokens of <= 4 chars
    assert count_tokens("a, b!") == 4
    text = "The quick brown fox jumps over the lazy dog."
    assert count_tokens(text) == count_tokens(text)


def test_synthetic_tokens_are_one_token_each() -> None:
    text = "".join(synthetic_token(i) for i in range(500))
    assert count_tokens(text) == 500


def test_record_round_trip_and_torn_last_line(tmp_path) -> None:
    path = tmp_path / "records-w0.csv"
    with RecordWriter(path) as w:
        r = RequestRecord(request_id="a", ttft_s=0.05, e2e_s=0.25, output_tokens=5, itl_s=[0.05] * 4)
        r.finish_derived()
        w.write(r)
        w.write(RequestRecord(request_id="b", status=500, error="boom, with comma", cluster=3))
    # simulate a crash mid-row
    with open(path, "a") as fh:
        fh.write("c,/v1/chat")
    df = read_records(record_files(tmp_path))
    assert list(df["request_id"]) == ["a", "b"]  # the torn row is dropped, whole rows kept
    a = df.iloc[0]
    assert a["tpot_s"] == pytest.approx(0.05)
    assert a["itl_s"] == [0.05] * 4
    assert math.isnan(a["gt_arrival_ts"])
    b = df.iloc[1]
    assert b["error"] == "boom, with comma" and b["status"] == 500 and b["cluster"] == 3


def test_server_process_fails_fast_with_log_tail(tmp_path) -> None:
    cmd = [sys.executable, "-c", "import sys; print('bad flag --nope'); sys.exit(3)"]
    t0 = time.monotonic()
    with pytest.raises(ServerStartError, match="exited with code 3") as ei:
        ServerProcess(
            cmd, name="x", health_url=f"http://127.0.0.1:{free_port()}/health", log_path=tmp_path / "x.log"
        ).start()
    assert "bad flag --nope" in str(ei.value)
    assert time.monotonic() - t0 < 10


def test_server_process_health_and_group_kill(tmp_path) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    sp = ServerProcess(cmd, name="http", health_url=f"http://127.0.0.1:{port}/", log_path=tmp_path / "h.log")
    with sp:
        assert sp.alive()
    assert not sp.alive()
