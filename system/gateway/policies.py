"""Routing policies, chosen by `kind`: each picks an expert for a request and a fallback on failure."""

from __future__ import annotations

from typing import Protocol

from system.gateway.config import (
    ClusterSpillPolicyConfig,
    GatewayConfig,
    PolicyConfig,
    SinglePolicyConfig,
)
from system.gateway.pool import ExpertPool, ExpertState


class Classifier(Protocol):
    """What the gateway needs of `system.classifier.PromptClassifier`."""

    k: int

    def predict(self, text: str) -> int: ...

    def rank(self, text: str) -> list[int]: ...


class Policy:
    """Base policy. `choose` returns (expert or None when none is available, cluster or -1)."""

    kind = ""
    needs_classifier = False

    def __init__(self, pool: ExpertPool) -> None:
        self.pool = pool

    def choose(self, classifier: Classifier | None, text: str) -> tuple[ExpertState | None, int]:
        raise NotImplementedError

    def fallback(self, classifier: Classifier | None, text: str, exclude: set[str]) -> ExpertState | None:
        """Next candidate after `exclude` failed to connect; default: least outstanding of the rest."""
        rest = [e for e in self.pool.experts if e.name not in exclude and e.available()]
        return min(rest, key=_load) if rest else None


def _load(e: ExpertState) -> int:
    return e.outstanding


class ClusterPolicy(Policy):
    """The paper's routing: the prompt's cluster decides the expert; if that expert is unavailable,
    the expert of the next-nearest cluster takes it."""

    kind = "cluster"
    needs_classifier = True

    def __init__(self, pool: ExpertPool, cluster_experts: list[str]) -> None:
        super().__init__(pool)
        self.cluster_to_expert = [pool.by_name[n] for n in cluster_experts]

    def choose(self, classifier: Classifier | None, text: str) -> tuple[ExpertState | None, int]:
        assert classifier is not None
        c = int(classifier.predict(text))
        e = self.cluster_to_expert[c]
        if e.available():
            return e, c
        return self.fallback(classifier, text, {e.name}), c

    def fallback(self, classifier: Classifier | None, text: str, exclude: set[str]) -> ExpertState | None:
        assert classifier is not None
        for c in classifier.rank(text):
            e = self.cluster_to_expert[c]
            if e.name not in exclude and e.available():
                return e
        # experts that own no cluster still beat a 503
        return super().fallback(classifier, text, exclude)


class ClusterSpillPolicy(ClusterPolicy):
    """Cluster affinity until the chosen expert has `spill_threshold` outstanding requests; then the
    least-loaded available expert takes the request if it is less loaded."""

    kind = "cluster_spill"

    def __init__(self, pool: ExpertPool, cluster_experts: list[str], spill_threshold: int) -> None:
        super().__init__(pool, cluster_experts)
        self.spill_threshold = spill_threshold

    def choose(self, classifier: Classifier | None, text: str) -> tuple[ExpertState | None, int]:
        e, c = super().choose(classifier, text)
        if e is not None and e.outstanding >= self.spill_threshold:
            candidates = self.pool.available()
            if candidates:
                alt = min(candidates, key=_load)
                if alt.outstanding < e.outstanding:
                    return alt, c
        return e, c


class SinglePolicy(Policy):
    """Baseline: everything goes to one expert; no fallback (it is the only backend)."""

    kind = "single"

    def __init__(self, pool: ExpertPool, expert: str | None) -> None:
        super().__init__(pool)
        self.expert = pool.by_name[expert] if expert else pool.experts[0]

    def choose(self, classifier: Classifier | None, text: str) -> tuple[ExpertState | None, int]:
        return (self.expert if self.expert.available() else None), -1

    def fallback(self, classifier: Classifier | None, text: str, exclude: set[str]) -> ExpertState | None:
        return None


class RoundRobinPolicy(Policy):
    kind = "round_robin"

    def __init__(self, pool: ExpertPool) -> None:
        super().__init__(pool)
        self._next = 0

    def choose(self, classifier: Classifier | None, text: str) -> tuple[ExpertState | None, int]:
        experts = self.pool.experts
        n = len(experts)
        for i in range(n):
            e = experts[(self._next + i) % n]
            if e.available():
                self._next = (self._next + i + 1) % n
                return e, -1
        return None, -1


class LeastOutstandingPolicy(Policy):
    kind = "least_outstanding"

    def __init__(self, pool: ExpertPool) -> None:
        super().__init__(pool)
        self._start = 0

    def choose(self, classifier: Classifier | None, text: str) -> tuple[ExpertState | None, int]:
        experts = self.pool.experts
        n = len(experts)
        best: ExpertState | None = None
        # rotate the scan start so ties spread over experts instead of piling on the first
        self._start = (self._start + 1) % n
        for i in range(n):
            e = experts[(self._start + i) % n]
            if e.available() and (best is None or e.outstanding < best.outstanding):
                best = e
        return best, -1


POLICIES: dict[str, type[Policy]] = {
    p.kind: p
    for p in (ClusterPolicy, ClusterSpillPolicy, SinglePolicy, RoundRobinPolicy, LeastOutstandingPolicy)
}


def build_policy(
    cfg: PolicyConfig, gateway: GatewayConfig, pool: ExpertPool, classifier: Classifier | None
) -> Policy:
    """Instantiate the policy named by `cfg.kind` (cluster maps are resolved against the classifier's k)."""
    cls = POLICIES[cfg.kind]
    if cls.needs_classifier:
        if classifier is None:
            raise ValueError(f"policy {cfg.kind!r} needs a classifier, and none is loaded")
        experts = gateway.expert_for_cluster(int(classifier.k))
        if isinstance(cfg, ClusterSpillPolicyConfig):
            return ClusterSpillPolicy(pool, experts, cfg.spill_threshold)
        return ClusterPolicy(pool, experts)
    if isinstance(cfg, SinglePolicyConfig):
        if cfg.expert is not None and cfg.expert not in pool.by_name:
            raise ValueError(f"policy.expert {cfg.expert!r} is not an expert")
        return SinglePolicy(pool, cfg.expert)
    return cls(pool)  # type: ignore[call-arg]
