"""JSON request bodies under limits (nesting depth, digits per number, no NaN/Infinity), with the spans of
the top-level members so that one member can be replaced in the raw bytes without re-serialising."""

from __future__ import annotations

import json
import re
from json.decoder import WHITESPACE, scanstring
from typing import Any

DEFAULT_MAX_DEPTH = 64
DEFAULT_MAX_DIGITS = 100

# a JSON string (skipped whole) or one bracket: the depth scan only looks at brackets outside strings
_STRUCTURE = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')
_OPEN = frozenset(b"[{")
_CLOSE = frozenset(b"]}")


class JsonBodyError(ValueError):
    """The body is not acceptable JSON; `message` is meant for the client (400)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _reject_constant(name: str) -> Any:
    raise JsonBodyError(f"request body is not valid JSON: {name} is not a JSON number")


# one decoder, built once: json.loads with keyword arguments would build a new one per call
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _digits_decoder(max_digits: int) -> json.JSONDecoder:
    def parse_int(s: str) -> int:
        if len(s) - (s[0] == "-") > max_digits:
            raise JsonBodyError(f"a number in the request body has more than {max_digits} digits")
        return int(s)

    def parse_float(s: str) -> float:
        if sum(c.isdigit() for c in s) > max_digits:
            raise JsonBodyError(f"a number in the request body has more than {max_digits} digits")
        return float(s)

    return json.JSONDecoder(parse_int=parse_int, parse_float=parse_float, parse_constant=_reject_constant)


def check_depth(raw: bytes, max_depth: int) -> None:
    """Refuse nesting deeper than `max_depth` before any recursive parser sees it (RecursionError)."""
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return  # cannot be deeper: the common case costs two C-speed scans
    depth = 0
    for m in _STRUCTURE.finditer(raw):
        c = m.group()[0]
        if c in _OPEN:
            depth += 1
            if depth > max_depth:
                raise JsonBodyError(f"request body is nested deeper than {max_depth} levels")
        elif c in _CLOSE:
            depth -= 1


_DIGIT_MAP = bytes(1 if 48 <= i <= 57 else 0 for i in range(256))  # digits -> 1, anything else -> 0


def _decoder_for(raw: bytes, max_digits: int) -> json.JSONDecoder:
    # a run of more than max_digits digits somewhere (maybe inside a string): parse with checking hooks.
    # translate + `in` is ~5x cheaper than the regex \d{N} (which restarts at every digit)
    if b"\x01" * (max_digits + 1) in raw.translate(_DIGIT_MAP):
        return _digits_decoder(max_digits)
    return _DECODER


def _text(raw: bytes) -> str:
    try:
        return raw.decode(json.detect_encoding(raw), "surrogatepass")
    except (UnicodeDecodeError, LookupError) as e:
        raise JsonBodyError(f"request body is not valid JSON: {e}") from None


def _decode(raw: bytes, max_depth: int, max_digits: int) -> tuple[Any, str, json.JSONDecoder]:
    """(value, text, decoder) of `raw` under the limits; every failure is a JsonBodyError."""
    check_depth(raw, max_depth)
    decoder = _decoder_for(raw, max_digits)
    s = _text(raw)
    try:
        return decoder.decode(s), s, decoder
    except JsonBodyError:
        raise
    except (ValueError, RecursionError) as e:  # JSONDecodeError, int() digit limit
        raise JsonBodyError(f"request body is not valid JSON: {e}") from None


def loads(raw: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH, max_digits: int = DEFAULT_MAX_DIGITS) -> Any:
    """`json.loads(raw)` under the limits; every failure is a JsonBodyError (never RecursionError)."""
    return _decode(raw, max_depth, max_digits)[0]


class JsonObject:
    """A parsed top-level object and its text; `span(key)` says where a top-level member's value sits in
    the text (found when first asked, by a walk that stops at that key when it can)."""

    __slots__ = ("_scan", "_spans", "ascii", "text", "value")

    def __init__(self, value: dict[str, Any], text: str, ascii_: bool, scan: Any) -> None:
        self.value = value
        self.text = text
        self.ascii = ascii_  # text offsets are byte offsets
        self._scan = scan  # the decoder's scan_once (the same limits as the parse)
        self._spans: dict[str, tuple[int, int]] | None = None

    def span(self, key: str) -> tuple[int, int] | None:
        """(start, end) of the value of top-level member `key` in `text`; None when the key is absent or
        given more than once. When the key's plain spelling occurs once in the whole text and nothing in it
        is \\u-escaped, no other top-level member can be that key, so the walk stops at it; otherwise every
        member is walked (a key spelled with escapes, a duplicate)."""
        spans = self._spans
        if spans is None:
            text = self.text
            if key.isascii() and key.isidentifier() and "\\u" not in text and text.count(f'"{key}"') == 1:
                first = _member_spans(text, self._scan, until=key)
                if key in first:
                    return first[key]
            spans = self._spans = _member_spans(text, self._scan)
        return spans.get(key)


def loads_object(
    raw: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH, max_digits: int = DEFAULT_MAX_DIGITS
) -> JsonObject | Any:
    """Parse `raw` under the limits; a top-level object comes back as a JsonObject, anything else as is.

    One C-scanner parse, as json.loads (the members' positions are found only if `span` asks). Keys are
    the decoded keys: `"\\u006dodel"` is `model`. A key given twice keeps its last value (like json.loads)
    and gets no span.
    """
    value, s, decoder = _decode(raw, max_depth, max_digits)
    if not isinstance(value, dict):
        return value
    return JsonObject(value, s, raw.isascii(), decoder.scan_once)


def _member_spans(s: str, scan: Any, until: str | None = None) -> dict[str, tuple[int, int]]:
    """Where each top-level member's value sits in `s`, an object the decoder has accepted already (so no
    syntax checks here): keys seen once only. With `until`, stop after the first member of that key."""
    ws = WHITESPACE.match
    spans: dict[str, tuple[int, int]] = {}
    seen_twice: set[str] = set()
    i = ws(s, ws(s, 0).end() + 1).end()  # past "{"
    if s[i] == "}":
        return spans
    while True:
        key, i = scanstring(s, i + 1, True)
        start = ws(s, ws(s, i).end() + 1).end()  # past ":"
        _, i = scan(s, start)
        if key in spans or key in seen_twice:
            seen_twice.add(key)
            spans.pop(key, None)
        else:
            spans[key] = (start, i)
        if key == until:
            return spans
        i = ws(s, i).end()
        if s[i] == "}":
            return spans
        i = ws(s, i + 1).end()  # past ","


# json.dumps with keyword arguments builds a new encoder per call: this one is built once (same output)
_ENCODE = json.JSONEncoder(ensure_ascii=False).encode


def replace_member(raw: bytes, obj: JsonObject, key: str, new_value: Any) -> bytes:
    """`raw` with the value of top-level member `key` replaced (other bytes untouched); re-serialised
    when the key has no unique span (absent or duplicated)."""
    span = obj.span(key)
    if span is None:
        body = {**obj.value, key: new_value}
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    a, b = span
    new = _ENCODE(new_value).encode()
    if obj.ascii:
        return raw[:a] + new + raw[b:]
    # offsets are in characters: convert them to bytes of the UTF-8 body
    if not raw.startswith(b"\xef\xbb\xbf") and json.detect_encoding(raw) == "utf-8":
        ba = len(obj.text[:a].encode("utf-8", "surrogatepass"))
        bb = ba + len(obj.text[a:b].encode("utf-8", "surrogatepass"))
        return raw[:ba] + new + raw[bb:]
    return (obj.text[:a] + new.decode() + obj.text[b:]).encode("utf-8", "surrogatepass")
