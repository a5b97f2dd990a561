"""A loopback HTTP server that misbehaves on purpose, in front of a real engine or with canned answers.

`FaultProxy(upstream=None, routes={...})` answers each request by forwarding it to `upstream` (a real
engine) or from `routes` ({(method, path): (status, body bytes)}), then applies `proxy.fault`:
"none", "status" (answer `fault_status` with `fault_body`), "garbage" (200 with broken JSON),
"hang" (accept, never answer until the test ends), "cut" (send half the body, then close),
"close" (close the connection without answering). `proxy.requests` records (method, path, headers, body).
"""
from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class FaultProxy:
    def __init__(self, upstream: str | None = None,
                 routes: dict[tuple[str, str], tuple[int, bytes]] | None = None) -> None:
        self.upstream = urlsplit(upstream) if upstream else None
        self.routes = dict(routes or {})
        self.fault = "none"
        self.fault_status, self.fault_body = 400, b"{}"
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self._release = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet test output
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                proxy.requests.append((self.command, self.path, dict(self.headers), body))
                fault = proxy.fault
                if fault == "hang":
                    proxy._release.wait(60)
                    self.close_connection = True
                    return
                if fault == "close":
                    self.close_connection = True
                    return
                if fault == "status":
                    return self._send(proxy.fault_status, proxy.fault_body)
                if fault == "garbage":
                    return self._send(200, b'{"choices": [{"logprobs": {"content": [{"id": 1, "lo')
                status, data = proxy._answer(self.command, self.path, body)
                if fault == "cut":
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self._send(status, data)

            def _send(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _handle

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def _answer(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if (method, path) in self.routes:
            return self.routes[(method, path)]
        if self.upstream is None:
            return 404, json.dumps({"error": {"message": f"no route {path}"}}).encode()
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=120)
        try:
            conn.request(method, path, body=body or None, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def close(self) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
