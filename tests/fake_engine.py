"""A tiny stand-in for the Docker Engine API on a unix socket, for tests that need no real dockerd.

    with FakeEngine(tmp_path / "docker.sock", dump, version="20.10.24+dfsg1") as engine:
        fetch_inspect(engine.host)

It answers what nftdocker.live asks, from a ``{"networks": [...], "containers": [...]}`` dump (the
real captures in ../shared/reference/*/docker-inspect.json): ``/_ping``, ``/version``, ``/info``,
``/networks``, ``/networks/ID``, ``/containers/json``, ``/containers/ID/json`` (any ``/vX.Y`` prefix),
and ``/events``, which sends no event and stays open until the engine is closed. ``requests`` lists
the paths asked. ``version=None`` leaves ``Version`` out of the /version answer.
"""

from __future__ import annotations

import json
import re
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    engine: "FakeEngine"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def address_string(self) -> str:  # a unix socket's peer has no host
        return "fake-engine"

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Api-Version", self.server.engine.api_version)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        engine = self.server.engine
        path = re.sub(r"^/v\d+\.\d+", "", urlsplit(self.path).path)
        engine.requests.append(path)
        nets = {n["Id"]: n for n in engine.dump.get("networks", [])}
        ctrs = {c["Id"]: c for c in engine.dump.get("containers", [])}
        if path == "/_ping":
            data = b"OK"
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif path == "/version":
            v: dict[str, Any] = {"ApiVersion": engine.api_version, "MinAPIVersion": "1.12", "Os": "linux"}
            if engine.version is not None:
                v["Version"] = engine.version
            self._send(200, v)
        elif path == "/networks":
            self._send(200, [{"Id": i, "Name": n["Name"]} for i, n in nets.items()])
        elif path.startswith("/networks/") and path[len("/networks/"):] in nets:
            self._send(200, nets[path[len("/networks/"):]])
        elif path == "/containers/json":
            self._send(200, [{"Id": i, "Names": [c["Name"]]} for i, c in ctrs.items()])
        elif (m := re.fullmatch(r"/containers/([^/]+)/json", path)) and m.group(1) in ctrs:
            self._send(200, ctrs[m.group(1)])
        elif path == "/events":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            engine.closed.wait(30)  # bounded: no test holds a stream longer
            self.close_connection = True
        else:
            self._send(404, {"message": f"page not found: {path}"})


class FakeEngine:
    def __init__(self, socket_path: Path | str, dump: dict[str, Any], version: str | None = "28.0.1",
                 api_version: str = "1.48") -> None:
        self.socket_path = Path(socket_path)
        self.host = f"unix://{self.socket_path}"
        self.dump = dump
        self.version = version
        self.api_version = api_version
        self.requests: list[str] = []
        self.closed = threading.Event()
        self._server = _Server(str(self.socket_path), _Handler)
        self._server.engine = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-engine", daemon=True)

    def __enter__(self) -> "FakeEngine":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.closed.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        self.socket_path.unlink(missing_ok=True)

