"""Scrapes Prometheus text endpoints (`/metrics` of engines and gateway) into long-format CSV rows."""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from system.telemetry.base import CsvSampler

METRICS_HEADER = ("ts", "target", "metric", "labels", "value")


def parse_prometheus_text(text: str) -> list[tuple[str, str, float]]:
    """(sample name, labels as compact sorted JSON, value) for every sample in a Prometheus text payload."""
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = json.dumps(s.labels, sort_keys=True, separators=(",", ":")) if s.labels else ""
            out.append((s.name, labels, float(s.value)))
    return out


class PrometheusScraper(CsvSampler):
    """Every `interval_s`, GETs each target's metrics URL and writes `ts, target, metric, labels, value`.

    `ts` is the time the response arrived. A target that is down or answers non-200 is skipped for that tick
    (counted in `failures`); engines without /metrics (transformers serve) are simply not targets.
    `keep` optionally restricts samples to metric names starting with one of the given prefixes; names ending
    in one of `drop_suffixes` are skipped (by default histogram buckets and `_created` timestamps, which are
    ~80 % of vLLM's samples while `_sum`/`_count` still give means and rates).
    """

    HEADER = METRICS_HEADER

    def __init__(
        self,
        path: str | Path,
        targets: Mapping[str, str] | Callable[[], Mapping[str, str]],
        interval_s: float = 1.0,
        timeout_s: float = 0.8,
        keep: Sequence[str] | None = None,
        drop_suffixes: Sequence[str] = ("_bucket", "_created"),
    ) -> None:
        super().__init__(path, interval_s)
        self._targets = targets
        self.timeout_s = timeout_s
        self.keep = tuple(keep) if keep else None
        self.drop_suffixes = tuple(drop_suffixes)
        self.failures: dict[str, int] = {}

    def _current(self) -> Mapping[str, str]:
        return self._targets() if callable(self._targets) else self._targets

    def scrape_one(self, url: str) -> str:
        with urllib.request.urlopen(url, timeout=self.timeout_s) as r:
            return r.read().decode("utf-8", "replace")

    def sample(self) -> list[list[Any]]:
        rows: list[list[Any]] = []
        for target, url in self._current().items():
            try:
                text = self.scrape_one(url)
            except (urllib.error.URLError, OSError, TimeoutError):
                self.failures[target] = self.failures.get(target, 0) + 1
                continue
            ts = round(time.time(), 3)
            for name, labels, value in parse_prometheus_text(text):
                if (self.keep is not None and not name.startswith(self.keep)) or (
                    self.drop_suffixes and name.endswith(self.drop_suffixes)
                ):
                    continue
                rows.append([ts, target, name, labels, "" if math.isnan(value) else repr(value)])
        return rows
