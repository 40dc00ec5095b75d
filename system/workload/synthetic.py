"""Synthetic prompts of fixed or uniformly random token lengths (vLLM's "random" dataset, offline)."""

from __future__ import annotations

import math
import random
from typing import Any, ClassVar

from system.tokens import synthetic_token
from system.workload.base import Prompt, PromptSource, register

DISTRIBUTIONS = ("fixed", "uniform")


def _length_range(name: str, value: Any, distribution: str, range_ratio: float) -> tuple[int, int]:
    """(lo, hi) token bounds of an option given as an int or, for `uniform`, an explicit [lo, hi]."""
    if isinstance(value, (list, tuple)):
        if distribution != "uniform":
            raise ValueError(f"synthetic option {name!r} may be [lo, hi] only with distribution 'uniform'")
        if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ValueError(f"synthetic option {name!r} must be [lo, hi] integers, got {value!r}")
        lo, hi = int(value[0]), int(value[1])
    elif isinstance(value, int) and not isinstance(value, bool):
        lo = hi = value
        if distribution == "uniform":
            # vLLM's random dataset: uniform in [len * (1 - r), len * (1 + r)]
            lo = max(1, math.ceil(value * (1.0 - range_ratio)))
            hi = max(lo, math.floor(value * (1.0 + range_ratio)))
    else:
        raise ValueError(f"synthetic option {name!r} must be an integer or [lo, hi], got {value!r}")
    if lo < 1 or hi < lo:
        raise ValueError(f"synthetic option {name!r} must satisfy 1 <= lo <= hi, got {value!r}")
    return lo, hi


@register
class SyntheticSource(PromptSource):
    """Prompts of exactly `prompt_tokens` tokens (count_tokens) asking for `output_tokens` tokens."""

    kind = "synthetic"
    options: ClassVar[dict[str, Any]] = {
        "prompt_tokens": 128,
        "output_tokens": 128,
        "distribution": "fixed",
        "range_ratio": 0.5,
    }

    def load(self, n: int, seed: int, **options: Any) -> list[Prompt]:
        distribution = options["distribution"]
        if distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"synthetic distribution must be one of {', '.join(DISTRIBUTIONS)}, got {distribution!r}"
            )
        ratio = options["range_ratio"]
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
            raise ValueError(f"synthetic option 'range_ratio' must be a number in [0, 1), got {ratio!r}")
        p_lo, p_hi = _length_range("prompt_tokens", options["prompt_tokens"], distribution, float(ratio))
        o_lo, o_hi = _length_range("output_tokens", options["output_tokens"], distribution, float(ratio))
        rng = random.Random(seed)
        prompts = []
        for _ in range(n):
            plen = rng.randint(p_lo, p_hi)
            olen = rng.randint(o_lo, o_hi)
            # random tokens (each exactly one token) keep prompts distinct: no accidental prefix-cache hits
            text = "".join(synthetic_token(rng.getrandbits(20)) for _ in range(plen)).rstrip()
            prompts.append(Prompt(text=text, reference_output_tokens=olen, label=None))
        return prompts
