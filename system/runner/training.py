"""Train (or reuse) the classifier a routed configuration needs, into its run directory."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from system.runner.config import Configuration, ExperimentConfig


def classifier_plan(cfg: ExperimentConfig, conf: Configuration) -> dict | None:
    """What would be trained: {k, svd_components, workload spec} or {path}; None without a classifier."""
    spec = conf.gateway.classifier
    if not conf.needs_classifier or spec is None:
        return None
    if spec.path:
        return {"path": spec.path}
    if spec.workload is not None:
        workload = spec.workload.to_spec(cfg.seed + 1)
        workload["n"] = spec.train_n if "n" not in spec.workload.model_fields_set else workload["n"]
    else:
        # same source as the load, another seed: the routed prompts were never seen in training
        workload = cfg.workload.to_spec(cfg.seed)
        workload.update(n=spec.train_n, seed=workload["seed"] + 1)
    return {"k": spec.k or len(conf.experts), "svd_components": spec.svd_components, "workload": workload}


def ensure_classifier(
    cfg: ExperimentConfig, conf: Configuration, conf_dir: Path, echo: Callable[[str], None] = print
) -> Path | None:
    """The classifier directory for `conf`: the given path, one trained earlier in this run, or a new one."""
    plan = classifier_plan(cfg, conf)
    if plan is None:
        return None
    if "path" in plan:
        p = Path(plan["path"]).resolve()
        if not p.is_dir():
            raise FileNotFoundError(f"configuration {conf.name!r}: classifier directory {p} does not exist")
        return p
    out = (conf_dir / "classifier").resolve()
    if (out / "card.json").is_file():
        return out  # resume: trained by an earlier invocation
    from system.classifier import PromptClassifier
    from system.workload import load_prompts

    echo(f"[{conf.name}] training classifier k={plan['k']} on {plan['workload']}")
    prompts = load_prompts(plan["workload"])
    kwargs = {} if plan["svd_components"] is None else {"svd_components": plan["svd_components"]}
    clf = PromptClassifier.train(prompts, plan["k"], seed=cfg.seed, workload=plan["workload"], **kwargs)
    tmp = out.with_name("classifier.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    clf.save(tmp)
    tmp.rename(out)  # atomic: a half-written classifier is never reused on resume
    return out
