"""Deterministic approximate tokenizer shared by the simulator, the gateway and the load generator.

Real BPE tokenizers (Llama-3's tiktoken-style vocabulary) average ~4 characters of English per token and
split on word/punctuation boundaries. We approximate that without a vocabulary download: every run of
letters/digits is one token per started 4 characters, every other non-space character is its own token.
On English prose this lands within ~15 % of Llama-3's count; it is exact enough for load shaping, and,
more importantly, it is deterministic, so the simulator and the harness always agree on counts.
"""

from __future__ import annotations

import re

_PIECES = re.compile(r"[A-Za-z0-9]+|[^\sA-Za-z0-9]")
CHARS_PER_TOKEN = 4


def count_tokens(text: str) -> int:
    """Approximate token count of `text` (deterministic, >= 0)."""
    n = 0
    for m in _PIECES.finditer(text):
        n += (len(m.group()) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN
    return n


# A fixed vocabulary used when an engine must *produce* text: each entry is exactly one token.
_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "but",
    "have",
    "an",
    "they",
    "you",
    "were",
    "her",
    "she",
    "had",
    "been",
    "one",
    "all",
    "we",
    "can",
    "has",
    "more",
    "if",
    "will",
    "its",
    "also",
    "so",
    "what",
    "when",
    "into",
    "may",
    "them",
    "only",
    "some",
    "time",
    "new",
    "two",
    "over",
    "such",
    "then",
    "than",
    "very",
    "most",
    "way",
    "out",
    "many",
    "just",
    "like",
    "made",
]


def synthetic_token(i: int) -> str:
    """The i-th generated token's text: a short word plus a space, exactly one token for count_tokens."""
    return _WORDS[(i * 7919) % len(_WORDS)] + " "
