"""The C hot paths (system/_speedups.c): the chunked-body tracker against httptools, the classifier kernel's
edge cases (its agreement with sklearn is in test_classifier.py)."""

from __future__ import annotations

import random
from typing import Any

import httptools
import numpy as np
import pytest

from tests.conftest import require_speedups

HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


@pytest.fixture(scope="module")
def sp() -> Any:
    return require_speedups()


def httptools_body(stream: bytes) -> tuple[bytes, bool]:
    """An independent reader of a chunked body: (payload, complete) as httptools parses HEAD + stream."""
    got: list[bytes] = []
    done: list[bool] = []
    cb = type(
        "CB",
        (),
        {"on_body": lambda self, b: got.append(b), "on_message_complete": lambda self: done.append(True)},
    )
    httptools.HttpResponseParser(cb()).feed_data(HEAD + stream)
    return b"".join(got), bool(done)


def random_body(rng: random.Random) -> tuple[bytes, bytes]:
    """(chunked coding, payload): 0-6 chunks of 1-300 bytes, upper or lower hex, some extensions and
    trailers."""
    parts, payload = [], b""
    for _ in range(rng.randint(0, 6)):
        data = rng.randbytes(rng.randint(1, 300))
        size = b"%x" % len(data) if rng.random() < 0.5 else b"%X" % len(data)
        ext = b";name=value" if rng.random() < 0.2 else b""
        parts.append(size + ext + b"\r\n" + data + b"\r\n")
        payload += data
    parts.append(b"0" + (b";last" if rng.random() < 0.2 else b"") + b"\r\n")
    parts.append(b"x-trailer: 1\r\n" if rng.random() < 0.2 else b"")
    parts.append(b"\r\n")
    return b"".join(parts), payload


def splits(rng: random.Random, data: bytes) -> list[bytes]:
    cuts = (
        sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 8))))
        if len(data) > 1
        else []
    )
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def test_buffered_reads_give_the_payload_at_every_split(sp: Any) -> None:
    rng = random.Random(0)
    for _ in range(400):
        coded, payload = random_body(rng)
        assert httptools_body(coded) == (payload, True)  # the generator itself is valid HTTP
        t = sp.ChunkedBody()
        got = b""
        for piece in splits(rng, coded):
            assert not t.complete
            got += t.feed(piece, False)
        assert got == payload and t.complete and t.extra == 0


def test_verbatim_reads_pass_the_bytes_as_they_came(sp: Any) -> None:
    rng = random.Random(1)
    for _ in range(400):
        coded, _ = random_body(rng)
        t = sp.ChunkedBody()
        pieces = splits(rng, coded)
        outs = [t.feed(p, True) for p in pieces]
        assert b"".join(outs) == coded and t.complete
        assert all(o is p for o, p in zip(outs, pieces, strict=True))  # no copy: the read itself is written


def test_switching_to_verbatim_mid_chunk_gives_the_client_a_valid_stream(sp: Any) -> None:
    """Reads buffered first (the relay re-frames their payload as one chunk), then piped: the client's bytes
    parse, by httptools, to the whole payload and end exactly once, wherever the switch falls."""
    rng = random.Random(2)
    for _ in range(600):
        coded, payload = random_body(rng)
        pieces = splits(rng, coded)
        k = rng.randint(0, len(pieces))
        t = sp.ChunkedBody()
        buffered = b"".join(t.feed(p, False) for p in pieces[:k])
        client = b"%x\r\n%s\r\n" % (len(buffered), buffered) if buffered else b""  # UpstreamResponse.pipe
        if t.complete:  # everything came before the switch: the relay's final send ends the stream
            client += b"0\r\n\r\n"
        else:
            client += b"".join(t.feed(p, True) for p in pieces[k:])
        assert httptools_body(client) == (payload, True)


def test_bytes_after_the_end_are_counted_not_passed(sp: Any) -> None:
    t = sp.ChunkedBody()
    assert t.feed(b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200", True) == b"3\r\nabc\r\n0\r\n\r\n"
    assert t.complete and t.extra == len(b"HTTP/1.1 200")
    t = sp.ChunkedBody()
    assert t.feed(b"3\r\nabc\r\n0\r\n\r\nxy", False) == b"abc" and t.extra == 2
    with pytest.raises(ValueError, match="after the end"):
        t.feed(b"more", False)


@pytest.mark.parametrize(
    "bad",
    [
        b"zz\r\nnot a chunk\r\n",  # not hex
        b"3\r\nabcXY",  # data not followed by CRLF
        b"3\nabc\r\n",  # bare LF after the size
        b"0\r\nbad\n\r\n",  # bare LF in the trailers
        b"0\r\n\n",  # bare LF as the final line
        b"\r\n",  # no size at all
        b"3;ext\nabc\r\n",  # bare LF in a chunk extension
    ],
)
def test_bad_framing_raises(sp: Any, bad: bytes) -> None:
    t = sp.ChunkedBody()
    with pytest.raises(ValueError, match="bad chunked body"):
        for i in range(len(bad)):  # byte by byte: the state carries across reads
            t.feed(bad[i : i + 1], False)
    with pytest.raises(ValueError, match="after the end"):  # unusable once it failed
        t.feed(b"0\r\n\r\n", False)
    # httptools refuses the same bytes (the tracker is no more lenient on these)
    with pytest.raises(httptools.HttpParserError):
        httptools_body(bad)


def test_blanks_after_the_size_are_taken_but_not_a_digit_after_them(sp: Any) -> None:
    # RFC 9112's chunk-ext allows blanks before ';' (httptools refuses them)
    for coded in (b"5 ;a=b\r\nhello\r\n0\r\n\r\n", b"5\t \r\nhello\r\n0\r\n\r\n"):
        t = sp.ChunkedBody()
        assert t.feed(coded, False) == b"hello" and t.complete
    with pytest.raises(ValueError, match="size line"):
        sp.ChunkedBody().feed(b"5 5\r\nhello\r\n", False)


def test_a_size_beyond_any_body_is_refused(sp: Any) -> None:
    with pytest.raises(ValueError, match="size line"):
        sp.ChunkedBody().feed(b"1000000000000000\r\n", True)  # 16 hex digits (httptools takes up to 2^64)


def test_kernel_edge_cases(sp: Any) -> None:
    rows = np.array([[1.0, 0.0, 1.0, -1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.5, 0.5]])  # dim 2, k 2
    k = sp.Kernel(rows, 2, [1.0, 1.0], False)
    assert k.nearest({0: 1}) == 0  # z = (1, 0): dots (1, -1)
    assert k.nearest({1: 3}) == -1  # a zero vector: the caller decides
    assert k.nearest({2: 1}) == 0  # a tie (0.5, 0.5): the first, like argmin
    assert sp.Kernel(rows, 2, [5.0, 1.0], False).nearest({2: 1}) == 1  # the centroid norms count
    # sublinear tf: a count of e^2 weighs 3; (0: 1, 2: e^2) gives dots 1 - 3*0.5*... checked against numpy
    counts = {0: 1, 2: 7}
    for sublinear in (False, True):
        w = np.array([1.0, (1 + np.log(7)) if sublinear else 7.0])
        zc = w @ rows[[0, 2]]
        expect = int(np.argmin(np.array([1.0, 2.0]) - 2 * zc[2:] / np.linalg.norm(zc[:2])))
        assert sp.Kernel(rows, 2, [1.0, 2.0], sublinear).nearest(counts) == expect
    with pytest.raises(IndexError):
        k.nearest({3: 1})
    with pytest.raises(TypeError):
        k.nearest([(0, 1)])
    with pytest.raises(TypeError, match="ints"):
        k.nearest({np.int64(0): 1})
    with pytest.raises(ValueError, match="positive"):
        k.nearest({0: 0})
    with pytest.raises(ValueError, match="columns"):
        sp.Kernel(rows, 3, [1.0, 1.0], False)
    with pytest.raises(ValueError, match="float64"):
        sp.Kernel(rows.astype(np.float32), 2, [1.0, 1.0], False)
