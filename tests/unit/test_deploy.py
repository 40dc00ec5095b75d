"""deploy/k8s offline: every object loads strictly into the official `kubernetes` client models (a typo'd
field fails), references resolve (selectors, ports, volumes, ConfigMaps, Service URLs), configs validate."""

from __future__ import annotations

import copy
import importlib.util
import re
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

kubernetes = pytest.importorskip("kubernetes")  # the dev extra; missing = skip, not a false pass
from kubernetes.client import models as k8s_models  # noqa: E402

from system.config import ConfigError  # noqa: E402
from system.gateway.config import GatewayConfig  # noqa: E402
from system.runner.config import ExperimentConfig, load_experiment  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
_PRIMITIVES = {
    "str": (str,),
    "bytes": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
}
_LIST = re.compile(r"^[Ll]ist\[(.*)\]$")
_DICT = re.compile(r"^(?:dict\(str, (.*)\)|Dict\[str, (.*)\])$")


class ManifestError(ValueError):
    pass


def model_class(obj: dict[str, Any]) -> type:
    """apps/v1 + Deployment -> V1Deployment (the client's naming)."""
    version = str(obj["apiVersion"]).split("/")[-1]
    name = version[0].upper() + version[1:] + obj["kind"]
    cls = getattr(k8s_models, name, None)
    if cls is None:
        raise ManifestError(f"no kubernetes model {name} for {obj['apiVersion']} {obj['kind']}")
    return cls


def strict(data: Any, typ: str, path: str) -> Any:
    """Build the client model of type `typ` from plain data; unknown keys and wrong types raise.

    The client's own deserializer silently drops unknown fields, which is exactly the typo we must catch.
    Stricter than kubectl on one point: quantities must be quoted strings (the client models demand it).
    """
    # type strings: `List[X]` / `Dict[str, X]` (client >= 32), `list[X]` / `dict(str, X)` (older clients)
    if m := _LIST.match(typ):
        if not isinstance(data, list):
            raise ManifestError(f"{path}: expected a list, got {type(data).__name__}")
        return [strict(v, m.group(1), f"{path}[{i}]") for i, v in enumerate(data)]
    if m := _DICT.match(typ):
        if not isinstance(data, dict):
            raise ManifestError(f"{path}: expected a mapping, got {type(data).__name__}")
        inner = m.group(1) or m.group(2)
        return {k: strict(v, inner, f"{path}.{k}") for k, v in data.items()}
    if typ in _PRIMITIVES:
        if (isinstance(data, bool) and typ != "bool") or not isinstance(data, _PRIMITIVES[typ]):
            raise ManifestError(f"{path}: expected {typ}, got {data!r}")
        return data
    if typ in ("object", "datetime", "date"):
        return data
    cls = getattr(k8s_models, typ)
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected a {typ} mapping, got {data!r}")
    by_json = {v: k for k, v in cls.attribute_map.items()}
    kwargs = {}
    for key, value in data.items():
        if key not in by_json:
            raise ManifestError(f"{path}: unknown field {key!r} for {typ}")
        attr = by_json[key]
        kwargs[attr] = strict(value, cls.openapi_types[attr], f"{path}.{key}")
    try:
        return cls(**kwargs)  # client-side validation: required fields, some enums
    except ValueError as e:
        raise ManifestError(f"{path}: {e}") from e


def load_object(obj: dict[str, Any], where: str = "") -> Any:
    cls = model_class(obj)
    return strict(obj, cls.__name__, where or f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}")


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for f in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc:
                out.append((f, doc))
    return out


def by_kind(kind: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (d["metadata"].get("namespace", ""), d["metadata"]["name"]): d
        for _, d in manifests()
        if d["kind"] == kind
    }


def _pod_specs() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    out = []
    for _, d in manifests():
        if d["kind"] in ("Deployment", "DaemonSet", "Job"):
            out.append((d["metadata"]["name"], d, d["spec"]["template"]))
    return out


def test_every_object_loads_strictly_into_the_kubernetes_models() -> None:
    docs = manifests()
    kinds = {d["kind"] for _, d in docs}
    assert {"Namespace", "ConfigMap", "Deployment", "Service", "DaemonSet", "Job"} <= kinds
    for f, d in docs:
        load_object(d, f"{f.name}:{d['kind']}/{d['metadata']['name']}")


def test_the_strict_loader_catches_typos_wrong_types_and_missing_fields() -> None:
    dep = next(d for _, d in manifests() if d["kind"] == "Deployment")
    bad = copy.deepcopy(dep)
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(ManifestError, match="unknown field 'imagePullPolicyy'"):
        load_object(bad)
    bad = copy.deepcopy(dep)
    bad["spec"]["replicas"] = "one"
    with pytest.raises(ManifestError, match=r"spec\.replicas: expected int"):
        load_object(bad)
    bad = copy.deepcopy(dep)
    del bad["spec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(ManifestError, match="name"):
        load_object(bad)
    with pytest.raises(ManifestError, match="no kubernetes model"):
        load_object({"apiVersion": "apps/v1", "kind": "Deploymnet", "metadata": {"name": "x"}})


def test_selectors_ports_and_volumes_resolve() -> None:
    workloads = _pod_specs()
    configmaps = {n for _, n in by_kind("ConfigMap")} | {
        "expert-router-classifier",
        "expert-router-experiment",
    }
    claims = {n for _, n in by_kind("PersistentVolumeClaim")}
    for name, d, template in workloads:
        labels = template["metadata"]["labels"]
        if d["kind"] != "Job":
            sel = d["spec"]["selector"]["matchLabels"]
            assert sel.items() <= labels.items(), f"{name}: selector does not match its pods"
        spec = template["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{name}: mount of undefined volume {m['name']}"
            ports = {p["name"] for p in c.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                if probe in c:
                    assert c[probe]["httpGet"]["port"] in ports, f"{name}: {probe} on an unnamed port"
        for v in volumes.values():
            if "configMap" in v:
                assert v["configMap"]["name"] in configmaps, f"{name}: unknown ConfigMap {v['configMap']}"
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims
    # every Service selects some workload's pods and targets a named container port of them
    for (ns, svc), s in by_kind("Service").items():
        matches = [
            (name, t)
            for name, d, t in workloads
            if d["metadata"]["namespace"] == ns
            and s["spec"]["selector"].items() <= t["metadata"]["labels"].items()
        ]
        assert matches, f"Service {svc} selects no pods"
        for _, t in matches:
            names = {p["name"] for c in t["spec"]["containers"] for p in c.get("ports", [])}
            for p in s["spec"]["ports"]:
                assert p["targetPort"] in names, (
                    f"Service {svc}: targetPort {p['targetPort']} not on its pods"
                )


def _service_ports() -> dict[str, set[int]]:
    """'<svc>.<ns>.svc.cluster.local' -> its ports."""
    return {
        f"{name}.{ns}.svc.cluster.local": {p["port"] for p in s["spec"]["ports"]}
        for (ns, name), s in by_kind("Service").items()
    }


def _assert_service_url(url: str, services: dict[str, set[int]]) -> None:
    u = urllib.parse.urlsplit(url)
    assert u.hostname in services, f"{url}: no such Service in deploy/k8s"
    assert u.port in services[u.hostname], f"{url}: Service has no port {u.port}"


def test_gateway_configmap_is_a_valid_gateway_config_pointing_at_the_expert_services() -> None:
    cm = by_kind("ConfigMap")[("llm-bench", "expert-router-gateway")]
    cfg = GatewayConfig.model_validate(yaml.safe_load(cm["data"]["gateway.yaml"]))
    dep = by_kind("Deployment")[("llm-bench", "expert-router-gateway")]
    mounts = {m["mountPath"] for m in dep["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert str(cfg.classifier) in mounts  # the classifier ConfigMap is mounted where the config says
    services = _service_ports()
    for e in cfg.experts:
        _assert_service_url(e.url, services)
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--config") + 1] in mounts


def test_gateway_deployment_command_parses_with_the_real_cli() -> None:
    from system.gateway.cli import gateway

    c = by_kind("Deployment")[("llm-bench", "expert-router-gateway")]["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert c["command"] == ["expert-router", "gateway"]
    ctx = gateway.make_context("gateway", list(c["args"]))  # parses and type-checks, runs nothing
    assert ctx.params["port"] == 8000 and ctx.params["host"] == "0.0.0.0"


def test_cluster_experiment_targets_the_deployed_services() -> None:
    cfg = load_experiment(ROOT / "experiments" / "k8s-cluster.yaml")
    services = _service_ports()
    for conf in cfg.configurations:
        for e in conf.experts:
            assert e.engine.kind == "external"
            _assert_service_url(e.engine.url, services)
            _assert_service_url(e.engine.metrics_url, services)
        if conf.gateway.external:
            _assert_service_url(conf.gateway.url, services)
    hostport = {
        p["hostPort"]
        for c in by_kind("DaemonSet")[("llm-bench", "dcgm-exporter")]["spec"]["template"]["spec"][
            "containers"
        ]
        for p in c["ports"]
    }
    assert {urllib.parse.urlsplit(t.url).port for t in cfg.telemetry.dcgm} <= hostport


def test_deploy_doc_shows_exactly_the_cluster_experiment_file() -> None:
    doc = (ROOT / "docs" / "DEPLOY.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", doc, flags=re.S)
    shown = [b for b in blocks if "name: k8s-routed-vs-single" in b]
    assert shown, "docs/DEPLOY.md must show experiments/k8s-cluster.yaml"
    assert shown[0] == (ROOT / "experiments" / "k8s-cluster.yaml").read_text()
    ExperimentConfig.model_validate(yaml.safe_load(shown[0]))


def test_classifier_configmap_round_trips_a_trained_classifier(tmp_path: Path) -> None:
    import base64

    from system.classifier import PromptClassifier
    from system.workload import load_prompts

    spec = importlib.util.spec_from_file_location("classifier_configmap", K8S / "classifier_configmap.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    prompts = load_prompts({"kind": "labelled", "n": 200, "seed": 0})
    clf = PromptClassifier.train(prompts, k=4, svd_components=None, seed=0)
    clf.save(tmp_path / "clf")
    cm = mod.classifier_configmap(tmp_path / "clf")
    load_object(cm)
    # what the pod sees: the ConfigMap's files in one directory
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    (mounted / "card.json").write_text(cm["data"]["card.json"])
    (mounted / "model.skops").write_bytes(base64.b64decode(cm["binaryData"]["model.skops"]))
    loaded = PromptClassifier.load(mounted)
    texts = [p.text for p in prompts[:20]]
    assert list(loaded.predict_many(texts)) == list(clf.predict_many(texts))
    with pytest.raises(FileNotFoundError, match="not a classifier directory"):
        mod.classifier_configmap(tmp_path)


def test_example_experiments_validate() -> None:
    for name in ("external-example.yaml", "k8s-cluster.yaml"):
        try:
            load_experiment(ROOT / "experiments" / name)
        except ConfigError as e:  # pragma: no cover - the message is the point
            pytest.fail(str(e))
