"""The Prompt record, the PromptSource plug-in base class, its registry and `load_prompts(spec)`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar


@dataclass(frozen=True)
class Prompt:
    """One prompt: its text, the output length it should be answered with (tokens), and a domain label."""

    text: str
    reference_output_tokens: int
    label: str | None = None


class PromptSource(ABC):
    """A family of prompts chosen by `spec["kind"]`; subclasses declare their extra options with defaults."""

    kind: ClassVar[str]
    # option name -> default, beyond the common `n` and `seed`
    options: ClassVar[dict[str, Any]] = {}
    default_n: ClassVar[int] = 1000

    @abstractmethod
    def load(self, n: int, seed: int, **options: Any) -> list[Prompt]:
        """`n` prompts (fewer only when the source runs out), deterministic for (n, seed, options)."""


SOURCES: dict[str, type[PromptSource]] = {}
S = TypeVar("S", bound=type[PromptSource])


def register(cls: S) -> S:
    """Class decorator adding a PromptSource to SOURCES under its `kind`."""
    if cls.kind in SOURCES:
        raise ValueError(f"prompt source kind {cls.kind!r} registered twice")
    SOURCES[cls.kind] = cls
    return cls


COMMON_OPTIONS = ("n", "seed")


def _check_int(name: str, value: Any, minimum: int) -> int:
    # bool is an int subclass: reject it explicitly, `n: true` is a typo, not 1
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"workload option {name!r} must be an integer >= {minimum}, got {value!r}")
    return value


def load_prompts(spec: dict[str, Any]) -> list[Prompt]:
    """Load prompts from the source named by spec["kind"] with the spec's other keys as options.

    Raises ValueError naming the valid kinds / options when the spec has an unknown kind or option.
    """
    if not isinstance(spec, dict):
        raise ValueError(f"workload spec must be a mapping with a 'kind' key, got {type(spec).__name__}")
    kinds = ", ".join(sorted(SOURCES))
    if "kind" not in spec:
        raise ValueError(f"workload spec has no 'kind'; valid kinds: {kinds}")
    kind = spec["kind"]
    if kind not in SOURCES:
        raise ValueError(f"unknown workload kind {kind!r}; valid kinds: {kinds}")
    cls = SOURCES[kind]
    valid = [*COMMON_OPTIONS, *cls.options]
    unknown = sorted(set(spec) - {"kind", *valid})
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for workload kind {kind!r}; "
            f"valid options: {', '.join(valid)}"
        )
    n = _check_int("n", spec.get("n", cls.default_n), 1)
    seed = _check_int("seed", spec.get("seed", 0), 0)
    opts = {name: spec.get(name, default) for name, default in cls.options.items()}
    return cls().load(n, seed, **opts)


def describe_sources() -> dict[str, dict[str, Any]]:
    """kind -> {option: default} for help texts and error messages."""
    return {k: {"n": c.default_n, "seed": 0, **c.options} for k, c in sorted(SOURCES.items())}
