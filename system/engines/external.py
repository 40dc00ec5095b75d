"""Engine kind `external`: an OpenAI server that already runs (vLLM on a cluster, Kubernetes, ...); nothing is
launched, readiness is polled, the served model and the server's version are discovered for the manifest."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator

from system.config import StrictModel
from system.processes import ServerStartError

_URL = re.compile(r"^https?://[^/\s]+")
# endpoints that tell the server's version: vLLM `/version` {"version": ...}; TGI `/info` {"version": ...}
VERSION_PATHS = ("/version", "/info")


def normalize_url(v: str, what: str = "url") -> str:
    """A server root: http(s)://host[:port][/prefix], no trailing slash, no trailing /v1 (added per call)."""
    v = v.strip()
    if not _URL.match(v):
        raise ValueError(f"{what} {v!r} must start with http:// or https:// and name a host")
    v = v.rstrip("/")
    # people paste OpenAI base URLs; the harness adds /v1/... itself
    return v[: -len("/v1")] if v.endswith("/v1") else v


class ExternalEngine(StrictModel):
    """An already-running OpenAI-compatible server: `url` is its root (…/v1 is accepted and stripped).

    `model`: the name to send; unset = the one model `/v1/models` lists (an error if it lists several).
    `metrics_url`: Prometheus text to scrape into metrics.csv (vLLM: `<url>/metrics`); unset = none.
    `health_path`: polled for HTTP 200 before the run ("" = only `/v1/models` is polled).
    """

    kind: Literal["external"] = "external"
    url: str
    model: str | None = None
    metrics_url: str | None = None
    health_path: str = "/health"
    startup_timeout_s: float = Field(default=60.0, gt=0)  # readiness wait: it runs already, or should soon
    warmup_requests: int = Field(default=0, ge=0)
    # whether the server accepts vLLM's `ignore_eos` request field (vLLM and the sim do)
    ignore_eos: bool = True

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return normalize_url(v)

    @field_validator("metrics_url")
    @classmethod
    def _metrics_url(cls, v: str | None) -> str | None:
        if v is not None and not _URL.match(v.strip()):
            raise ValueError(f"metrics_url {v!r} must start with http:// or https:// and name a host")
        return v.strip() if v else v

    @field_validator("health_path")
    @classmethod
    def _health_path(cls, v: str) -> str:
        if v and not v.startswith("/"):
            raise ValueError(f"health_path {v!r} must start with / (or be empty)")
        return v


class ExternalLauncher:
    """No command: the LaunchSpec only carries the URLs; the stack polls and probes instead of starting."""

    def build(self, spec: ExternalEngine, *, name: str, port: int, host: str = "", seed: int = 0) -> Any:
        from system.engines.base import LaunchSpec

        return LaunchSpec(
            cmd=[],
            env={},
            health_url=f"{spec.url}{spec.health_path or '/v1/models'}",
            base_url=spec.url,
            metrics_url=spec.metrics_url,
            served_model=spec.model or "",  # filled in by discovery when unset
            startup_timeout_s=spec.startup_timeout_s,
            external=True,
        )


class ExternalNotReady(ServerStartError):
    """An external server did not answer in time, or does not serve the configured model."""


@dataclass
class Probe:
    """One HTTP GET: status (None when no answer), parsed JSON body or None, headers, error text."""

    status: int | None
    body: Any
    headers: dict[str, str]
    error: str = ""


def http_get(url: str, timeout_s: float = 3.0) -> Probe:
    """GET `url`; never raises for HTTP or network errors (they are what a readiness poll expects)."""
    req = urllib.request.Request(url, headers={"accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            raw = r.read()
            status, headers = int(r.status), dict(r.headers.items())
    except urllib.error.HTTPError as e:
        return Probe(e.code, None, dict(e.headers.items()) if e.headers else {}, f"HTTP {e.code}")
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        return Probe(None, None, {}, f"{type(reason).__name__}: {reason}")
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    return Probe(status, body, headers)


def model_ids(body: Any) -> list[str]:
    """Model ids of an OpenAI `/v1/models` answer ({"data": [{"id": ...}, ...]})."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        return []
    return [str(m["id"]) for m in body["data"] if isinstance(m, dict) and "id" in m]


def wait_ready(servers: dict[str, tuple[str, float]], poll_s: float = 0.5) -> None:
    """Poll every `name -> (health URL, timeout)` together until each answers 200; ExternalNotReady names
    the first that does not within its timeout, with the last error seen."""
    start = time.monotonic()
    pending = dict(servers)
    last: dict[str, str] = {}
    while pending:
        for name, (url, timeout_s) in list(pending.items()):
            p = http_get(url, timeout_s=min(3.0, timeout_s))
            if p.status == 200:
                del pending[name]
                continue
            last[name] = p.error or f"HTTP {p.status}"
            if time.monotonic() - start > timeout_s:
                raise ExternalNotReady(
                    f"external server {name!r} not ready: GET {url} did not answer 200 within {timeout_s:g}s "
                    f"(last: {last[name]}). Engine kind `external` launches nothing: start the server, "
                    "check `url`/`health_path`, or raise `startup_timeout_s`."
                )
        if pending:
            time.sleep(poll_s)


def _version_of(body: Any) -> str | None:
    if isinstance(body, dict):
        for key in ("version", "server_version"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return None


def discover(name: str, role: str, url: str, *, model: str | None, timeout_s: float = 5.0) -> dict[str, Any]:
    """What an external server says about itself, for the manifest: models, the one to use, version.

    Raises ExternalNotReady when `model` is given and not served, or unset and the server lists several.
    """
    models = http_get(f"{url}/v1/models", timeout_s)
    ids = model_ids(models.body)
    info: dict[str, Any] = {
        "name": name,
        "role": role,
        "url": url,
        "probed_ts": time.time(),
        "models": ids,
        "models_status": models.status,
        "server_header": models.headers.get("server") or models.headers.get("Server"),
        # what vLLM adds per model (owned_by "vllm", root checkpoint, max_model_len)
        "model_details": [
            {k: m.get(k) for k in ("id", "owned_by", "root", "max_model_len") if k in m}
            for m in (models.body.get("data", []) if isinstance(models.body, dict) else [])
            if isinstance(m, dict)
        ],
        "version": None,
        "version_source": None,
        "version_body": None,
    }
    for path in VERSION_PATHS:
        v = http_get(f"{url}{path}", timeout_s)
        ver = _version_of(v.body) if v.status == 200 else None
        if ver is not None:
            body = v.body if len(json.dumps(v.body, default=str)) < 4000 else None
            info.update(version=ver, version_source=path, version_body=body)
            break
    if info["version"] is None and info["server_header"]:
        info.update(version=info["server_header"], version_source="server header")
    if role == "gateway":
        info["served_model"] = model
        return info
    if model is not None:
        if ids and model not in ids:
            raise ExternalNotReady(
                f"external expert {name!r} at {url} does not serve model {model!r}; it serves {ids}"
            )
        info["served_model"] = model
    elif len(ids) == 1:
        info["served_model"] = ids[0]
    elif not ids:
        raise ExternalNotReady(
            f"external expert {name!r} at {url}: GET /v1/models listed no model "
            f"({models.error or f'HTTP {models.status}'}); set `model` in its engine block"
        )
    else:
        raise ExternalNotReady(
            f"external expert {name!r} at {url} serves several models {ids}; set `model` to one of them"
        )
    return info
