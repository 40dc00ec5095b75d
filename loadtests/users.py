"""The streaming LLM user: picks a prompt, streams one completion, records it; plus per-process state."""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import gevent.lock
from geventhttpclient import HTTPClient
from locust import FastHttpUser, task

from loadtests.options import Settings
from loadtests.recording import Recorder
from loadtests.sse import stream_request
from system.records import RequestRecord

logger = logging.getLogger("loadtests.users")

CONNECT_TIMEOUT_S = 10.0


@dataclass
class ProcessState:
    """What every user of this worker process shares; set up at test start (loadtests/locustfile.py)."""

    settings: Settings | None = None
    recorder: Recorder | None = None
    prompts: list[Any] = field(default_factory=list)
    prompts_key: str = ""
    model: str | None = None  # resolved once per process (see resolve_model)
    model_lock: gevent.lock.Semaphore = field(default_factory=gevent.lock.Semaphore)


STATE = ProcessState()


def load_workload(settings: Settings) -> None:
    """Load the prompts once per process (again only when the workload options changed)."""
    key = json.dumps(settings.workload_spec, sort_keys=True)
    if key == STATE.prompts_key and STATE.prompts:
        return
    from system.workload import load_prompts

    prompts = list(load_prompts(dict(settings.workload_spec)))
    if not prompts:
        raise ValueError(f"workload {settings.workload_spec} produced no prompts")
    STATE.prompts, STATE.prompts_key = prompts, key
    logger.info("loaded %d prompts (%s)", len(prompts), key)


def split_host(host: str) -> tuple[str, str]:
    """('http://h:p', '/prefix') from a --host that may carry a path (a trailing /v1 is dropped)."""
    u = urlparse(host)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise ValueError(f"--host must be an http(s) URL, got {host!r}")
    prefix = u.path.rstrip("/")
    if prefix.endswith("/v1"):
        prefix = prefix[:-3]
    return f"{u.scheme}://{u.netloc}", prefix


def resolve_model(base: str, prefix: str, wanted: str) -> str:
    """`wanted`, except 'auto' on a server that does not list it: then the server's first model."""
    with STATE.model_lock:  # the first user asks, the others wait for its answer
        if STATE.model is not None:
            return STATE.model
        listed: list[str] = []
        try:
            client = HTTPClient.from_url(base, concurrency=1, connection_timeout=CONNECT_TIMEOUT_S)
            try:
                resp = client.get(f"{prefix}/v1/models")
                if resp.status_code == 200:
                    listed = [str(m["id"]) for m in json.loads(resp.read()).get("data", []) if "id" in m]
            finally:
                client.close()
        except Exception as e:
            logger.warning("GET %s/v1/models failed (%s); using model %r", base, e, wanted)
        model = wanted
        if wanted == "auto" and listed and "auto" not in listed:
            model = listed[0]
            logger.info("target does not serve 'auto'; using its first model %r", model)
        STATE.model = model
        return model


class StreamUserBase(FastHttpUser):
    """What both load kinds share: settings, the target, the request body and sending one recorded request.

    Streams go over geventhttpclient keep-alive connections (the client FastHttpUser wraps), read with
    `readline` so each SSE line is timed as it arrives; `self.client` stays usable for extensions.
    """

    abstract = True
    # FastHttpUser's defaults; our stream client takes its timeouts from the options instead
    network_timeout = 300.0

    def on_start(self) -> None:
        if STATE.settings is None or STATE.recorder is None:
            raise RuntimeError("loadtests: process state not initialised (locustfile test_start hook)")
        self.settings = STATE.settings
        self.recorder = STATE.recorder
        self.user_id = self.recorder.next_user_id()
        self.rng = random.Random(f"{self.settings.seed}-{self.user_id}")
        self.base, self.prefix = split_host(self.host or "")
        self.model = resolve_model(self.base, self.prefix, self.settings.model)

    def new_connection(self) -> HTTPClient:
        return HTTPClient.from_url(
            self.base,
            concurrency=1,
            connection_timeout=CONNECT_TIMEOUT_S,
            network_timeout=self.settings.request_timeout,
        )

    def build_body(self, text: str, max_tokens: int) -> dict[str, Any]:
        s = self.settings
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if s.endpoint.endswith("/chat/completions"):
            body["messages"] = [{"role": "user", "content": text}]
        else:
            body["prompt"] = text
        if s.ignore_eos:
            body["ignore_eos"] = True
        return body

    def send_one(self, http: HTTPClient) -> bool:
        """Stream one request on `http` and record it; False when the connection must be dropped.

        A request cut off by the end of the step (GreenletExit) is recorded with outcome `cut` and the
        exception propagates (the socket is then in an unknown state: the caller drops it).
        """
        s = self.settings
        prompt = self.rng.choice(STATE.prompts)
        max_tokens = max(1, min(int(prompt.reference_output_tokens), s.max_tokens))
        rec = RequestRecord(
            request_id=self.recorder.next_request_id(),
            endpoint=s.endpoint,
            model=self.model,
            stream=True,
            workload=s.workload,
            label=str(prompt.label or ""),
            user_id=self.user_id,
        )
        body = self.build_body(prompt.text, max_tokens)
        try:
            reusable = stream_request(http, self.prefix + s.endpoint, body, rec, prompt.text)
        except BaseException:
            self.recorder.record(rec)  # outcome "cut": written, but not a Locust request event
            raise
        self.recorder.record(rec)
        return reusable


class LLMStreamUser(StreamUserBase):
    """One user = one stream at a time (closed loop): stream, record, think, repeat."""

    def on_start(self) -> None:
        super().on_start()
        self.http: HTTPClient | None = None

    def on_stop(self) -> None:
        self._drop_connection()

    def wait_time(self) -> float:
        return self.settings.think_time

    def _connection(self) -> HTTPClient:
        if self.http is None:
            self.http = self.new_connection()
        return self.http

    def _drop_connection(self) -> None:
        if getattr(self, "http", None) is not None:
            assert self.http is not None
            self.http.close()
            self.http = None

    @task
    def stream_one(self) -> None:
        try:
            reusable = self.send_one(self._connection())
        except BaseException:
            self._drop_connection()
            raise
        if not reusable:
            self._drop_connection()
