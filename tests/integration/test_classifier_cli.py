"""`expert-router classifier train|eval|predict` end to end in subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from system.classifier.cli import classifier


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "system.cli", "classifier", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clf") / "model"
    r = _cli("train", "--workload", "labelled", "--k", "8", "--n", "1200", "--seed", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "saved to" in r.stdout and "ARI=" in r.stdout
    return out


def test_train_writes_model_and_card(trained: Path) -> None:
    card = json.loads((trained / "card.json").read_text())
    assert card["k"] == 8 and card["n_train"] == 1200 and card["seed"] == 2
    assert card["workload"] == {"kind": "labelled", "n": 1200, "seed": 2}
    assert (trained / "model.skops").stat().st_size > 0


def test_eval_prints_card_and_scores_a_fresh_sample(trained: Path) -> None:
    r = _cli("eval", str(trained))
    assert r.returncode == 0, r.stderr
    assert "k=8" in r.stdout and "silhouette" in r.stdout
    r = _cli("eval", str(trained), "--workload", "labelled", "--n", "300", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["card"]["k"] == 8
    assert out["sample"]["workload"]["seed"] == 3  # training seed + 1: unseen prompts
    assert sum(out["sample"]["cluster_sizes"]) == 300
    assert out["sample"]["fast_path_agreement"] >= 0.99
    assert out["sample"]["scores"]["ari"] > 0.5


def test_predict_prints_one_cluster_per_text(trained: Path) -> None:
    texts = [
        "Write a Python function that merges two sorted lists.",
        "What are the side effects of metformin?",
    ]
    r = _cli("predict", str(trained), *texts)
    assert r.returncode == 0, r.stderr
    ids = [int(x) for x in r.stdout.split()]
    assert len(ids) == 2 and all(0 <= i < 8 for i in ids) and ids[0] != ids[1]
    r = _cli("predict", str(trained), "--rank", "-", stdin=texts[0] + "\n\n" + texts[1] + "\n")
    ranks = [[int(x) for x in line.split()] for line in r.stdout.splitlines()]
    assert [rank[0] for rank in ranks] == ids and all(sorted(rank) == list(range(8)) for rank in ranks)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--workload", "labelled", "--k", "50", "--n", "10", "--out", "{tmp}/m"], "larger than"),
        (["train", "--workload", "labelled", "--k", "0", "--out", "{tmp}/m"], "--k"),
        (["train", "--workload", "bogus", "--k", "2", "--out", "{tmp}/m"], "bogus"),
        (
            ["train", "--workload", "labelled", "--k", "2", "--out", "{tmp}/m", "--dataset", "{tmp}/f"],
            "sharegpt",
        ),
        (
            ["train", "--workload", "sharegpt", "--k", "2", "--out", "{tmp}/m", "--dataset", "{tmp}/f"],
            "array",
        ),
        (["eval", "{tmp}/does-not-exist"], "does not exist"),
        (["eval", "{tmp}"], "model.skops"),
        (["predict", "{tmp}", "hello"], "model.skops"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    # in-process (CliRunner): the subprocess tests above already cover the console entry point
    (tmp_path / "f").write_text('{"not": "a list"}')
    r = CliRunner().invoke(classifier, [a.format(tmp=tmp_path) for a in args])
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
