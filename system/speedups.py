"""The optional C hot paths (`system/_speedups.c`): used when built, unless EXPERT_ROUTER_SPEEDUPS=0."""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

ENV = "EXPERT_ROUTER_SPEEDUPS"  # "0": the pure-Python paths even where the extension is built (A/B runs)


def _load() -> tuple[ModuleType | None, str]:
    if os.environ.get(ENV, "1").strip() == "0":
        return None, f"python ({ENV}=0)"
    try:
        from system import _speedups
    except ImportError as e:  # built without a C compiler (setup.py marks the extension optional)
        return None, f"python (C extension not built: {e})"
    return _speedups, "c"


_module, MODE = _load()
# the classifier's numeric kernel (system.classifier.fastpath) and the chunked-body tracker
# (system.gateway.upstream), or None
Kernel: Any = getattr(_module, "Kernel", None)
ChunkedBody: Any = getattr(_module, "ChunkedBody", None)
