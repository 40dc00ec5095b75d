"""Load shapes (Locust LoadTestShape): the paper's user-count steps, constant load, and a spike.

Locust uses a shape class whenever the locustfile defines one, so loadtests/locustfile.py exports the
one class picked by `--shape` (see `shape_from_argv`) and none when it is absent (then -u/-r/-t apply).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from locust import LoadTestShape

from loadtests.options import SHAPES, parse_steps


def _spawn_rate(opts: Any, users: int) -> float:
    # 0 means "reach the level in about a second"; never below 1 user/s
    rate = float(getattr(opts, "shape_spawn_rate", 0.0) or 0.0)
    return rate if rate > 0 else float(max(1, users))


class _OptionsShape(LoadTestShape):
    abstract = True

    @property
    def opts(self) -> Any:
        return self.runner.environment.parsed_options


class StepsShape(_OptionsShape):
    """Hold each user count of `--steps` for `--step-seconds`, then stop (the paper's ramp)."""

    def tick(self) -> tuple[int, float] | None:
        steps = parse_steps(self.opts.steps)
        idx = int(self.get_run_time() // float(self.opts.step_seconds))
        if idx >= len(steps):
            return None
        return steps[idx], _spawn_rate(self.opts, steps[idx])


class ConstantShape(_OptionsShape):
    """`--shape-users` users for `--shape-seconds`."""

    def tick(self) -> tuple[int, float] | None:
        if self.get_run_time() >= float(self.opts.shape_seconds):
            return None
        users = int(self.opts.shape_users)
        return users, _spawn_rate(self.opts, users)


class SpikeShape(_OptionsShape):
    """`--shape-users` users, jumping to `--spike-users` at `--spike-at` for `--spike-seconds`."""

    def tick(self) -> tuple[int, float] | None:
        t = self.get_run_time()
        o = self.opts
        if t >= float(o.shape_seconds):
            return None
        in_spike = float(o.spike_at) <= t < float(o.spike_at) + float(o.spike_seconds)
        users = int(o.spike_users if in_spike else o.shape_users)
        return users, _spawn_rate(o, users)


SHAPE_CLASSES: dict[str, type[LoadTestShape]] = {
    "steps": StepsShape,
    "constant": ConstantShape,
    "spike": SpikeShape,
}


def shape_from_argv(argv: Sequence[str], environ: dict[str, str] | None = None) -> type[LoadTestShape] | None:
    """The shape class named by `--shape X` / `--shape=X` (or LOCUST_SHAPE), None when absent.

    Locust decides on the shape class when it imports the locustfile, before it parses our options,
    hence this early look at the command line.
    """
    env = os.environ if environ is None else environ
    name = env.get("LOCUST_SHAPE", "")
    for i, arg in enumerate(argv):
        if arg == "--shape" and i + 1 < len(argv):
            name = argv[i + 1]
        elif arg.startswith("--shape="):
            name = arg.split("=", 1)[1]
    if not name:
        return None
    if name not in SHAPES:
        raise SystemExit(f"--shape must be one of {', '.join(SHAPES)}, got {name!r}")
    return SHAPE_CLASSES[name]
