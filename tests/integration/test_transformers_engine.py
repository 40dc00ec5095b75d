"""A real engine: `transformers serve --continuous-batching` on a tiny random-weight Llama, on the CPU.

Skipped unless transformers + torch are importable here, or EXPERT_ROUTER_TRANSFORMERS_PYTHON names an
interpreter that has them (the `transformers` extra is too heavy for the default test venv).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from system.engines.base import TransformersEngine, build_launch, engine_process
from system.processes import free_port

pytestmark = pytest.mark.transformers
REPO = Path(__file__).resolve().parents[2]


def _tf_python() -> str:
    return os.environ.get("EXPERT_ROUTER_TRANSFORMERS_PYTHON") or sys.executable


def test_transformers_serve_streams_from_random_model(tmp_path: Path) -> None:
    import openai

    py = _tf_python()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    model_dir = tmp_path / "tiny-llama"
    subprocess.run(
        [py, "-m", "system.engines.random_model", "--shape", "tiny", "--out", str(model_dir), "--dtype",
         "float32"],
        check=True, env=env, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert (model_dir / "config.json").is_file() and (model_dir / "tokenizer.json").is_file()

    spec = TransformersEngine(
        model=str(model_dir),
        device="cpu",
        dtype="float32",
        executable=str(Path(py).parent / "transformers"),
        env={"HF_HUB_OFFLINE": "1"},
        startup_timeout_s=180,
    )
    launch = build_launch(spec, name="tf", port=free_port(), seed=0)
    with engine_process(launch, name="tf", log_dir=tmp_path / "logs"):
        client = openai.OpenAI(base_url=f"{launch.base_url}/v1", api_key="x", timeout=120)
        stream = client.chat.completions.create(
            model=launch.served_model,
            messages=[{"role": "user", "content": "Write a haiku about routers."}],
            max_tokens=12,
            stream=True,
        )
        pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
        # a random model emits arbitrary tokens, but it must emit them one content chunk at a time
        assert 1 <= len(pieces) <= 12
        assert "".join(pieces).strip() != "" or len(pieces) > 1
