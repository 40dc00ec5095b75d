"""Routing policies: cluster affinity + fallback, spill threshold, single, round robin, least outstanding."""

from __future__ import annotations

import pytest

from system.gateway.config import (
    BreakerConfig,
    ClusterPolicyConfig,
    ClusterSpillPolicyConfig,
    GatewayConfig,
    LeastOutstandingPolicyConfig,
    RoundRobinPolicyConfig,
    SinglePolicyConfig,
)
from system.gateway.policies import POLICIES, build_policy
from system.gateway.pool import ExpertPool


class TableClassifier:
    """Deterministic stand-in: the prompt text is the cluster ranking, e.g. '2,0,1'."""

    def __init__(self, k: int) -> None:
        self.k = k

    def predict(self, text: str) -> int:
        return self.rank(text)[0]

    def rank(self, text: str) -> list[int]:
        return [int(c) for c in text.split(",")]


def setup(policy: dict, n: int = 3, **extra: object) -> tuple[GatewayConfig, ExpertPool]:
    experts = [{"name": f"e{i}", "url": f"http://127.0.0.1:{9000 + i}"} for i in range(n)]
    cfg = GatewayConfig.model_validate({"policy": policy, "experts": experts, "classifier": "x", **extra})
    return cfg, ExpertPool(cfg.experts, BreakerConfig(failure_threshold=1, open_s=60))


def test_registry_has_every_kind() -> None:
    assert set(POLICIES) == {"cluster", "cluster_spill", "single", "round_robin", "least_outstanding"}


def test_cluster_routes_to_the_cluster_expert_and_falls_back_by_rank() -> None:
    cfg, pool = setup({"kind": "cluster"}, cluster_map=["e2", "e0", "e1"])
    clf = TableClassifier(3)
    p = build_policy(cfg.policy, cfg, pool, clf)
    e, c = p.choose(clf, "1,2,0")
    assert (e.name, c) == ("e0", 1)
    # e0 down: the next-nearest cluster (2 -> e1) takes it, the reported cluster stays the prompt's own
    pool.by_name["e0"].healthy = False
    e, c = p.choose(clf, "1,2,0")
    assert (e.name, c) == ("e1", 1)
    # connect failure on e1 as well: fallback walks the ranking past what was tried
    assert p.fallback(clf, "1,2,0", {"e0", "e1"}).name == "e2"
    pool.by_name["e2"].breaker.record_failure()  # threshold 1: open
    assert p.fallback(clf, "1,2,0", {"e0", "e1"}) is None
    pool.by_name["e1"].healthy = False
    assert p.choose(clf, "1,2,0") == (None, 1)


def test_cluster_policy_needs_a_classifier_and_a_complete_map() -> None:
    cfg, pool = setup({"kind": "cluster"}, cluster_map=["e0", "e1"])
    with pytest.raises(ValueError, match="needs a classifier"):
        build_policy(cfg.policy, cfg, pool, None)
    with pytest.raises(ValueError, match=r"no expert for clusters \[2\]"):
        build_policy(cfg.policy, cfg, pool, TableClassifier(3))


def test_spill_only_at_threshold_and_only_to_a_less_loaded_expert() -> None:
    cfg, pool = setup({"kind": "cluster_spill", "spill_threshold": 4})
    clf = TableClassifier(3)
    p = build_policy(cfg.policy, cfg, pool, clf)
    e0, e1, e2 = pool.experts
    e0.outstanding, e1.outstanding, e2.outstanding = 3, 1, 2
    assert p.choose(clf, "0,1,2")[0] is e0  # below threshold: affinity wins
    e0.outstanding = 4
    assert p.choose(clf, "0,1,2") == (e1, 0)  # at threshold: least loaded, cluster still reported
    e1.healthy = False
    assert p.choose(clf, "0,1,2")[0] is e2  # spill target must be available
    e2.outstanding = 9
    e1.healthy = True
    e1.outstanding = 7
    assert p.choose(clf, "0,1,2")[0] is e0  # everyone busier: stay


def test_single_never_falls_back() -> None:
    cfg, pool = setup({"kind": "single", "expert": "e1"})
    p = build_policy(cfg.policy, cfg, pool, None)
    assert p.choose(None, "") == (pool.by_name["e1"], -1)
    assert p.fallback(None, "", {"e1"}) is None
    pool.by_name["e1"].healthy = False
    assert p.choose(None, "") == (None, -1)
    default = build_policy(SinglePolicyConfig(kind="single"), cfg, pool, None)
    assert default.choose(None, "")[0] is pool.experts[0]


def test_round_robin_cycles_and_skips_unavailable() -> None:
    cfg, pool = setup({"kind": "round_robin"})
    p = build_policy(RoundRobinPolicyConfig(kind="round_robin"), cfg, pool, None)
    assert [p.choose(None, "")[0].name for _ in range(4)] == ["e0", "e1", "e2", "e0"]
    pool.by_name["e2"].healthy = False
    assert [p.choose(None, "")[0].name for _ in range(4)] == ["e1", "e0", "e1", "e0"]
    for e in pool.experts:
        e.healthy = False
    assert p.choose(None, "") == (None, -1)


def test_least_outstanding_picks_min_and_spreads_ties() -> None:
    cfg, pool = setup({"kind": "least_outstanding"})
    p = build_policy(LeastOutstandingPolicyConfig(kind="least_outstanding"), cfg, pool, None)
    e0, e1, e2 = pool.experts
    e0.outstanding, e1.outstanding, e2.outstanding = 5, 2, 3
    assert p.choose(None, "")[0] is e1
    e1.outstanding = 5
    e2.outstanding = 5
    assert {p.choose(None, "")[0].name for _ in range(3)} == {"e0", "e1", "e2"}
    assert p.fallback(None, "", {"e0"}).name in {"e1", "e2"}


def test_switching_policy_config_validates_against_pool() -> None:
    cfg, pool = setup({"kind": "round_robin"})
    clf = TableClassifier(3)
    assert build_policy(ClusterPolicyConfig(kind="cluster"), cfg, pool, clf).kind == "cluster"
    spill = build_policy(ClusterSpillPolicyConfig(kind="cluster_spill", spill_threshold=2), cfg, pool, clf)
    assert spill.spill_threshold == 2
    with pytest.raises(ValueError, match="not an expert"):
        build_policy(SinglePolicyConfig(kind="single", expert="zz"), cfg, pool, None)
