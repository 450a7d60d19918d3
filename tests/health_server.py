"""A real HTTP server on a free loopback port whose health a test switches: what the
health agent's checks look at in the tests."""

from __future__ import annotations

import http.server
import threading
from typing import Any


class HealthServer:
    """Answers ``GET /health`` with 200 "ok" while ``healthy``, else 503 "busy: ..."."""

    def __init__(self, healthy: bool = True, body: str = "ok") -> None:
        self.healthy = healthy
        self.body = body
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                ok = server.healthy
                payload = (server.body if ok else "busy: " + "x" * 2000).encode()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/health"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HealthServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
