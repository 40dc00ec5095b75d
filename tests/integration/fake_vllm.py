"""Stand-in `vllm` / `transformers` executable for launcher tests: `fake_vllm.py serve MODEL --port P ...`.

Accepts any flags, records how it was started, and serves just enough of vLLM's OpenAI server for a stack:
`/health`, `/v1/models`, `/metrics` (vLLM gauge/counter names), and `/v1/chat/completions` + `/v1/completions`
(stream and non-stream, `max_tokens` tokens, usage chunk when asked). Behaviour switches (environment):

- FAKE_VLLM_RECORD=path: write {"argv", "env"} (CUDA_* variables) as JSON there at start;
- FAKE_VLLM_MODE=ok (default) | exit (print an error, exit 3 at once) | unhealthy (/health is always 503);
- FAKE_VLLM_START_DELAY_S=s: sleep before listening (weights "loading").
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for system.tokens

from system.tokens import count_tokens, synthetic_token

STATE = {"requests": 0, "generation_tokens": 0, "prompt_tokens": 0}


def _flag(argv: list[str], name: str, default: str) -> str:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return default


def _model(argv: list[str]) -> str:
    forced = _flag(argv, "--force-model", "")
    if forced:
        return forced
    # `serve MODEL ...`: the first positional after "serve"
    rest = argv[argv.index("serve") + 1 :] if "serve" in argv else argv
    return rest[0] if rest and not rest[0].startswith("-") else "fake-model"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one response per connection: no chunked-encoding bookkeeping
    model = "fake-model"
    mode = "ok"

    def log_message(self, fmt: str, *args: object) -> None:  # quiet
        return

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(503 if self.mode == "unhealthy" else 200, b"")
        elif self.path == "/v1/models":
            data = {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "fake"}]}
            self._send(200, json.dumps(data).encode())
        elif self.path == "/metrics":
            text = (
                "# TYPE vllm:num_requests_running gauge\n"
                f'vllm:num_requests_running{{model_name="{self.model}"}} 0.0\n'
                "# TYPE vllm:num_requests_waiting gauge\n"
                f'vllm:num_requests_waiting{{model_name="{self.model}"}} 0.0\n'
                "# TYPE vllm:generation_tokens counter\n"
                f'vllm:generation_tokens_total{{model_name="{self.model}"}} {STATE["generation_tokens"]}.0\n'
            )
            self._send(200, text.encode(), "text/plain; version=0.0.4")
        else:
            self._send(
                404, b'{"error": {"message": "not found", "type": "not_found", "param": null, "code": 404}}'
            )

    def do_POST(self) -> None:
        if self.path not in ("/v1/chat/completions", "/v1/completions"):
            self._send(
                404, b'{"error": {"message": "not found", "type": "not_found", "param": null, "code": 404}}'
            )
            return
        chat = self.path == "/v1/chat/completions"
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
            n = int(body.get("max_tokens") or 16)
        except (ValueError, TypeError):
            msg = {
                "error": {
                    "message": "bad request",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": 400,
                }
            }
            self._send(400, json.dumps(msg).encode())
            return
        prompt = (
            " ".join(str(m.get("content", "")) for m in body.get("messages", []))
            if chat
            else str(body.get("prompt"))
        )
        usage = {"prompt_tokens": count_tokens(prompt), "completion_tokens": n}
        usage["total_tokens"] = usage["prompt_tokens"] + n
        STATE["requests"] += 1
        STATE["generation_tokens"] += n
        obj = "chat.completion" if chat else "text_completion"
        tokens = [synthetic_token(i) for i in range(n)]
        if not body.get("stream"):
            text = "".join(tokens)
            choice = {"index": 0, "finish_reason": "length"}
            choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
            out = {"id": "fake", "object": obj, "model": self.model, "choices": [choice], "usage": usage}
            self._send(200, json.dumps(out).encode())
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()

        def event(data: dict) -> None:
            self.wfile.write(b"data: " + json.dumps(data).encode() + b"\n\n")
            self.wfile.flush()

        for i, tok in enumerate(tokens):
            last = i == n - 1
            choice = {"index": 0, "finish_reason": "length" if last else None}
            choice.update({"delta": {"content": tok}} if chat else {"text": tok})
            event({"id": "fake", "object": obj + ".chunk", "model": self.model, "choices": [choice]})
            time.sleep(0.001)
        if (body.get("stream_options") or {}).get("include_usage"):
            event(
                {"id": "fake", "object": obj + ".chunk", "model": self.model, "choices": [], "usage": usage}
            )
        self.wfile.write(b"data: [DONE]\n\n")


def main(argv: list[str]) -> int:
    record = os.environ.get("FAKE_VLLM_RECORD")
    if record:
        env = {k: v for k, v in os.environ.items() if k.startswith("CUDA_")}
        Path(record).write_text(json.dumps({"argv": argv, "env": env}))
    mode = os.environ.get("FAKE_VLLM_MODE", "ok")
    if mode == "exit":
        print("fake vllm: RuntimeError: CUDA out of memory (simulated start-up failure)", flush=True)
        return 3
    time.sleep(float(os.environ.get("FAKE_VLLM_START_DELAY_S", "0")))
    Handler.model = _flag(argv, "--served-model-name", "") or _model(argv)
    Handler.mode = mode
    server = ThreadingHTTPServer(
        (_flag(argv, "--host", "127.0.0.1"), int(_flag(argv, "--port", "8000"))), Handler
    )
    server.daemon_threads = True
    print(f"fake vllm serving {Handler.model} on {server.server_address}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
