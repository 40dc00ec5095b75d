"""Print the `expert-router-classifier` ConfigMap (binaryData) for a trained classifier directory.

    expert-router classifier train --workload labelled --k 4 --out clf/
    python deploy/k8s/classifier_configmap.py clf/ > deploy/k8s/classifier.yaml && kubectl apply -f ...

ConfigMaps hold at most 1 MiB; a k=8 TF-IDF/SVD classifier is far below that, a larger one fails here loudly.
"""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path
from typing import Any

import yaml

CONFIGMAP_LIMIT_BYTES = 1024 * 1024  # etcd's object size limit for a ConfigMap
FILES = ("model.skops", "card.json")


def classifier_configmap(
    directory: str | Path, name: str = "expert-router-classifier", namespace: str = "llm-bench"
) -> dict[str, Any]:
    """The ConfigMap as a dict: card.json under `data`, model.skops base64 under `binaryData`."""
    d = Path(directory)
    missing = [f for f in FILES if not (d / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{d}: not a classifier directory (missing {', '.join(missing)})")
    model = (d / "model.skops").read_bytes()
    card = (d / "card.json").read_text(encoding="utf-8")
    size = len(model) + len(card.encode())
    if size > CONFIGMAP_LIMIT_BYTES:
        raise ValueError(
            f"classifier is {size} bytes, over the 1 MiB ConfigMap limit: mount it from a volume"
        )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": "expert-router-gateway",
                "app.kubernetes.io/part-of": "expert-router",
            },
        },
        "data": {"card.json": card},
        "binaryData": {"model.skops": base64.b64encode(model).decode("ascii")},
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("directory")
    ap.add_argument("--name", default="expert-router-classifier")
    ap.add_argument("--namespace", default="llm-bench")
    args = ap.parse_args(argv)
    yaml.safe_dump(
        classifier_configmap(args.directory, args.name, args.namespace), sys.stdout, sort_keys=False
    )


if __name__ == "__main__":
    main()
