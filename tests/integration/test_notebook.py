"""analysis/notebooks/routed_vs_single.ipynb runs top to bottom on the fixture (nbclient, this Python)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "analysis" / "notebooks" / "routed_vs_single.ipynb"
KERNEL = "expert-router-test"


@pytest.fixture
def kernel_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernel spec running *this* interpreter.

    A fresh `make test` venv then needs no `ipykernel install`, and a user-level "python3" spec pointing at
    another Python cannot hijack the test (JUPYTER_PATH is searched before the user's kernel dirs).
    """
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "expert-router tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return KERNEL


def _run(kernel: str, cwd: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name=kernel, resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def _text(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            data = out.get("data", {})
            parts.append(data.get("text/plain", "") + data.get("text/markdown", ""))
    return "\n".join(parts)


def test_notebook_runs_on_the_fixture_by_default(kernel_here: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("EXPERT_ROUTER_RESULTS", raising=False)
    plots = tmp_path / "plots"
    monkeypatch.setenv("EXPERT_ROUTER_PLOTS", str(plots))
    nb = _run(kernel_here, NOTEBOOK.parent)  # the default results dir is found from the notebook's folder
    text = _text(nb)
    assert "fixtures/results/fixture/run-1" in text
    assert "routed vs single: crossover = 10 users" in text
    assert "At 50 users routed served 2.0× the output tokens/s of single" in text
    # the verdict cell: CIs and flags
    assert "tok/s [95% CI]" in text and "few_requests_p99" in text
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert sum(1 for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})) == 7
    assert (plots / "throughput_vs_users.png").stat().st_size > 0
