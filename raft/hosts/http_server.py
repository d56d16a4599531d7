"""Serve the HTTP API on 127.0.0.1 with the standard library, routing to the same
`ClusterApi` the Functions app uses: the API can be called with curl on a machine without
the Functions Core Tools (`python -m raft run --serve`)."""

from __future__ import annotations

import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from raft.hosts.http_api import ApiResponse, ClusterApi, error, header

log = logging.getLogger("raft.http")

LOOPBACK = "127.0.0.1"
COMMAND = re.compile(r"^/api/commands/([^/]+)$")
KEY = re.compile(r"^/api/kv/([^/]+)$")
MAX_BODY_BYTES = 1024 * 1024


def route(
    api: ClusterApi, method: str, target: str, headers: dict[str, str], body: bytes
) -> ApiResponse:
    url = urlsplit(target)
    path = url.path
    if method == "POST" and path == "/api/commands":
        query = parse_qs(url.query)
        request_id = header(headers, "x-request-id") or next(
            iter(query.get("request_id", [])), None
        )
        return api.post_command(body, request_id)
    if method == "POST" and path == "/api/cluster/leader":
        return api.post_leader(body)
    if method in ("POST", "DELETE") and path == "/api/cluster/servers":
        return api.change_servers(body, add=method == "POST")
    if method == "GET" and path == "/api/cluster":
        return api.get_cluster()
    if method == "GET" and path == "/api/health":
        return api.health()
    if method == "GET" and (match := COMMAND.match(path)):
        return api.get_command(unquote(match.group(1)))
    if method == "GET" and (match := KEY.match(path)):
        return api.get_key(unquote(match.group(1)))
    return error(404, f"no route for {method} {path}")


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, api: ClusterApi, port: int) -> None:
        self.api = api
        super().__init__((LOOPBACK, port), _Handler)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="raft-http", daemon=True)
        thread.start()
        return thread


class _Handler(BaseHTTPRequestHandler):
    server: ApiServer

    def do_GET(self) -> None:
        self._dispatch(b"")

    def do_DELETE(self) -> None:
        self.do_POST()

    def do_POST(self) -> None:
        declared = self.headers.get("Content-Length") or "0"
        if not (declared.isascii() and declared.isdigit()):
            self._send(error(400, f"Content-Length {declared[:40]!r} is not a byte count"))
            return
        length = int(declared)
        if length > MAX_BODY_BYTES:
            self._send(error(413, f"body over {MAX_BODY_BYTES} bytes"))
            return
        self._dispatch(self.rfile.read(length))

    def _dispatch(self, body: bytes) -> None:
        headers = {k: v for k, v in self.headers.items()}
        self._send(route(self.server.api, self.command, self.path, headers, body))

    def _send(self, response: ApiResponse) -> None:
        payload = response.text().encode()
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        log.info("%s %s", self.address_string(), format % args)
