"""Gateway config: the contract shape loads, mistakes fail with one clear line each, the CLI exits 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from system.config import ConfigError
from system.gateway.cli import gateway
from system.gateway.config import GatewayConfig, load_config

CONTRACT_YAML = """\
policy: {{kind: cluster}}
classifier: {clf}
experts:
  - {{name: e0, url: "http://127.0.0.1:9001"}}
  - {{name: e1, url: "http://127.0.0.1:9002"}}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "gw.yaml"
    p.write_text(text)
    return p


def test_contract_shape_loads_with_defaults(tmp_path: Path) -> None:
    (tmp_path / "clf").mkdir()
    cfg = load_config(write(tmp_path, CONTRACT_YAML.format(clf="clf")))
    assert cfg.policy.kind == "cluster"
    assert cfg.host == "127.0.0.1"
    assert cfg.classifier == (tmp_path / "clf").resolve()  # relative to the config file's directory
    assert [e.name for e in cfg.experts] == ["e0", "e1"]
    assert cfg.experts[0].model is None
    # clusters map to experts in order, wrapping when k > experts
    assert cfg.expert_for_cluster(3) == ["e0", "e1", "e0"]


def test_explicit_cluster_map_and_missing_cluster(tmp_path: Path) -> None:
    cfg = GatewayConfig.model_validate(
        {
            "policy": {"kind": "round_robin"},
            "experts": [{"name": "a", "url": "http://h:1"}, {"name": "b", "url": "http://h:2"}],
            "cluster_map": {0: "b", 1: "a"},
        }
    )
    assert cfg.expert_for_cluster(2) == ["b", "a"]
    with pytest.raises(ConfigError, match=r"no expert for clusters \[2\]"):
        cfg.expert_for_cluster(3)


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("policy: {kind: cluster}\nexperts: [{name: a, url: 'http://h:1'}]\n", "needs `classifier"),
        ("policy: {kind: nearest}\nexperts: [{name: a, url: 'http://h:1'}]\n", "policy"),
        ("policy: {kind: single}\nexperts: [{name: a, url: 'http://h:1'}]\nlimitz: {}\n", "limitz"),
        ("policy: {kind: single}\nexperts: [{name: a, url: 'h:1'}]\n", "must start with http"),
        ("policy: {kind: single}\nexperts: [{name: a, url: 'http://h:1/v1'}]\n", "without /v1"),
        (
            "policy: {kind: single}\nexperts: [{name: a, url: 'http://h:1'}, {name: a, url: 'http://h:2'}]\n",
            "duplicate",
        ),
        (
            "policy: {kind: single, expert: zz}\nexperts: [{name: a, url: 'http://h:1'}]\n",
            "'zz' is not an expert",
        ),
        (
            "policy: {kind: single}\nexperts: [{name: a, url: 'http://h:1'}]\ncluster_map: [a, q]\n",
            "cluster_map[1]",
        ),
        ("policy: {kind: single}\nexperts: []\n", "experts"),
        ("policy: {kind: single}\nexperts: [{name: auto, url: 'http://h:1'}]\n", "reserved"),
        (
            "policy: {kind: cluster_spill, spill_threshold: 0}\nexperts: [{name: a, url: 'http://h:1'}]\n",
            "spill",
        ),
        (
            "policy: {kind: single}\nexperts: [{name: a, url: 'http://h:1'}]\nlimits: {max_in_flight: 0}\n",
            "max_in",
        ),
        ("- just a list\n", "top level must be a mapping"),
    ],
)
def test_config_errors_are_clear(tmp_path: Path, yaml_text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, yaml_text))
    assert expected in str(exc.value)


def test_missing_classifier_directory_names_the_paths_tried(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"classifier directory not found.*nope"):
        load_config(write(tmp_path, CONTRACT_YAML.format(clf="nope")))


def test_cli_config_error_exits_2_with_message(tmp_path: Path) -> None:
    p = write(tmp_path, "policy: {kind: single}\nexperts: [{name: a, url: 'http://h:1'}]\nbogus: 1\n")
    result = CliRunner().invoke(gateway, ["--config", str(p)])
    assert result.exit_code == 2
    assert "bogus" in result.output and "Traceback" not in result.output
    missing = CliRunner().invoke(gateway, ["--config", str(tmp_path / "absent.yaml")])
    assert missing.exit_code == 2
    assert "config file not found" in missing.output
