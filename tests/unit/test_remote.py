"""Remote Locust workers: the control endpoint's upload rules and the worker's clock-offset estimate."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import click
import pytest

from system.processes import free_port
from system.runner.remote import Control, RemoteLocust
from system.runner.remote_worker import clock_offset, parse_master


def _q(step: str, body: bytes, **over: str) -> dict[str, str]:
    q = {
        "step": step,
        "worker": "hostA-1",
        "file": "records-hostA-11.csv",
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    q.update(over)
    return q


def test_uploads_are_checked_stored_atomically_and_replace_never_append(tmp_path: Path) -> None:
    c = Control("127.0.0.1", 0)
    body = b"request_id,start_ts\na,1\nb,2\n"
    assert c.store(_q("s1", body), body)[0] == 409  # no step announced
    c.announce("s1", tmp_path / "records")
    assert c.store(_q("s1", body, sha256="0" * 64), body)[0] == 400  # damaged in transit
    assert c.store(_q("s1", body, file="../etc/passwd"), body)[0] == 400  # names only, no paths
    assert c.store(_q("s1", body, worker="a/b"), body)[0] == 400
    assert c.store(_q("s0", body), body)[0] == 409  # a stale step
    status, reply = c.store(_q("s1", body), body)
    assert status == 200 and reply["lines"] == 2
    assert c.store(_q("s1", body), body)[0] == 200  # sent twice: replaced, not doubled
    assert (tmp_path / "records" / "records-hostA-11.csv").read_bytes() == body
    assert [p.name for p in (tmp_path / "records").iterdir()] == ["records-hostA-11.csv"]


def test_finish_reports_files_offsets_and_wait_returns_them(tmp_path: Path) -> None:
    c = Control("127.0.0.1", 0)
    c.announce("s1", tmp_path)
    body = b"h\n1\n"
    c.store(_q("s1", body), body)
    assert c.finish({"step": "nope", "worker": "hostA-1"})[0] == 409
    q = {"step": "s1", "worker": "hostA-1", "files": "1", "clock_offset_s": "-0.004", "rtt_s": "0.001"}
    assert c.finish({**q, "host": "hostA", "rc": "0"})[0] == 200
    got = c.wait_finished("s1", 2, timeout_s=0.2)  # only one of two: returns what arrived
    (r,) = got.values()
    assert r["files"] == ["records-hostA-11.csv"] and r["files_announced"] == 1
    assert r["clock_offset_s"] == -0.004 and r["clock_rtt_s"] == 0.001 and r["locust_returncode"] == 0


def test_clock_offset_against_a_live_control_endpoint() -> None:
    port = free_port()
    c = Control("127.0.0.1", port).start()
    try:
        offset, rtt = clock_offset(f"http://127.0.0.1:{port}", samples=3)
    finally:
        c.stop()
    # same host, same clock: the estimate is bounded by half the round trip it was measured with
    assert rtt > 0 and math.isfinite(offset) and abs(offset) <= rtt / 2 + 1e-3


def test_master_address_parsing_and_worker_count() -> None:
    assert parse_master("10.0.0.1:5557") == ("10.0.0.1", 5557)
    assert parse_master("[::1]:5557") == ("::1", 5557)
    with pytest.raises(click.BadParameter):
        parse_master("10.0.0.1")
    with pytest.raises(ValueError, match=">= 1"):
        RemoteLocust(0, 5557)
    assert RemoteLocust(2, 6000, bind_host="10.1.1.1").worker_command.endswith("--master 10.1.1.1:6000")
