"""Prompt token counting for the API shapes, seeded output lengths, and fast synthetic output text."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from itertools import accumulate

from system.tokens import count_tokens, synthetic_token

# Llama-3 chat template: every message is wrapped as
#   <|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>   -> 5 tokens around the content,
# and the prompt adds <|begin_of_text|> plus the assistant header the model continues from (4 tokens).
CHAT_TOKENS_PER_MESSAGE = 5
CHAT_TOKENS_PER_PROMPT = 5


def message_text(content: object) -> str:
    """Text of a chat message `content`: a string, or the text parts of a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:  # type: ignore[union-attr]
        if isinstance(part, dict) and part.get("type") == "text":
            parts.append(str(part.get("text", "")))
    return "\n".join(parts)


def chat_prompt_tokens(contents: Sequence[str]) -> int:
    """Prompt tokens of a chat request: content tokens + the chat template's fixed tokens."""
    return (
        sum(count_tokens(c) for c in contents)
        + CHAT_TOKENS_PER_MESSAGE * len(contents)
        + CHAT_TOKENS_PER_PROMPT
    )


def completion_prompt_tokens(prompt: str) -> int:
    """Prompt tokens of a completions request (at least 1: an empty prompt still has the BOS token)."""
    return max(1, count_tokens(prompt))


def natural_output_len(key: str, seed: int, median: float, sigma: float) -> int:
    """Where the model would stop (emit EOS) on its own: lognormal(ln median, sigma), >= 1.

    Seeded by (sim seed, prompt text or request seed), not by arrival order, so a given prompt gets the same
    length on every run whatever the concurrency.
    """
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    rng = random.Random(int.from_bytes(digest, "little"))
    return max(1, round(math.exp(rng.gauss(math.log(median), sigma))))


def resolve_output_len(natural: int, max_tokens: int, min_tokens: int, ignore_eos: bool) -> tuple[int, str]:
    """(output tokens, finish_reason) from the natural length and the request's vLLM sampling params."""
    if ignore_eos:
        return max_tokens, "length"
    n = max(natural, min_tokens)
    if n >= max_tokens:
        return max_tokens, "length"
    return n, "stop"


class TokenText:
    """Text of synthetic tokens [a, b) as one slice of a precomputed string (no per-token Python work)."""

    def __init__(self, max_tokens: int) -> None:
        toks = [synthetic_token(i) for i in range(max_tokens + 1)]
        self._text = "".join(toks)
        self._off = [0, *accumulate(len(t) for t in toks)]
        self.max_tokens = max_tokens

    def span(self, a: int, b: int) -> str:
        return self._text[self._off[a] : self._off[b]]
