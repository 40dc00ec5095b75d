"""Where benchmarks write by default: a git-ignored folder, so a run never overwrites committed results.

The committed JSON under results/benchmarks/ (and the docs generated from it, `python -m analysis.perfdoc`)
change only when `--out` (or `--md`) names those files explicitly.
"""

from __future__ import annotations

LOCAL_DIR = "results/benchmarks/local"


def local_out(name: str) -> str:
    """results/benchmarks/local/<name> (git-ignored; see .gitignore)."""
    return f"{LOCAL_DIR}/{name}"
