"""Serves recorded payloads on loopback (stand-in DCGM exporter or vLLM): `--route PATH=FILE[,FILE...]`.

Each GET of PATH returns the next file of its list (cycling), so a scraper sees values move between ticks.
`.json` files go out as application/json, others as Prometheus text. `/health` always answers 200. Run as
`python tests/integration/fake_recorded_server.py --port P --route /metrics=a.txt,b.txt`.
"""

from __future__ import annotations

import argparse
import itertools
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--route", action="append", default=[], help="PATH=FILE[,FILE...]")
    ap.add_argument("--server-header", default="fake-recorded/1.0")
    args = ap.parse_args()
    routes: dict[str, itertools.cycle[tuple[bytes, str]]] = {}
    for r in args.route:
        path, files = r.split("=", 1)
        payloads = []
        for f in files.split(","):
            ctype = "application/json" if f.endswith(".json") else "text/plain; version=0.0.4; charset=utf-8"
            payloads.append((Path(f).read_bytes(), ctype))
        routes[path] = itertools.cycle(payloads)
    lock = threading.Lock()
    server_header = args.server_header

    class Handler(BaseHTTPRequestHandler):
        def version_string(self) -> str:
            return server_header

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path in routes:
                with lock:
                    body, ctype = next(routes[path])
                status = 200
            elif path == "/health":
                body, ctype, status = b"", "text/plain", 200
            else:
                body, ctype, status = b'{"error": "not found"}', "application/json", 404
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *a: object) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
