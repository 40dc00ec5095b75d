"""Domain = prompt templates + slot vocabularies + the output-length distribution of its answers."""

from __future__ import annotations

import math
import random
import string
from dataclasses import dataclass, field


@dataclass(frozen=True)
class OutputLength:
    """Log-normal answer length in tokens, clipped to [lo, hi]; `median` is exp(mu)."""

    median: int
    sigma: float
    lo: int
    hi: int

    def draw(self, rng: random.Random) -> int:
        return max(self.lo, min(self.hi, round(rng.lognormvariate(math.log(self.median), self.sigma))))


@dataclass(frozen=True)
class Domain:
    """A prompt domain; templates and contexts use str.format fields, each naming a slot vocabulary."""

    label: str
    output: OutputLength
    templates: list[str]
    slots: dict[str, list[str]] = field(default_factory=dict)
    # background sentences a user adds around the request ("I'm using Go 1.22 with gRPC."); they carry the
    # domain's general vocabulary, shared across templates, as real prompts in one field do
    contexts: list[str] = field(default_factory=list)

    def fields(self) -> set[str]:
        """Every slot name used by the templates."""
        names: set[str] = set()
        for t in (*self.templates, *self.contexts):
            names.update(f for _, f, _, _ in string.Formatter().parse(t) if f)
        return names
