"""verify's agent: the helper process run in each namespace, and :class:`Agent`, its handle in the parent.

The parent starts it with ``ip netns exec NS python -S -c "... agent_main()"`` (this module, imported
from the package's own directory) and talks JSON lines: one command a line on its standard input,
one answer a line on its standard output, exit at EOF. Commands: ``sysctl`` (set them), ``serve``
(echo servers that answer with the peer address they saw, so masquerade and SNAT are observable),
``probe`` (connection attempts with a bounded pool and a timeout each). The agent side imports only
the standard library (and, for ``sysctl``, :func:`nftdocker.docker.generate.sysctl_path`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from nftdocker.errors import EnvironmentProblem
from nftdocker.verify.env import tool

DEFAULT_TIMEOUT = 1.0
DEFAULT_JOBS = 32


class Agent:
    """The helper process in one namespace: JSON lines in, JSON lines out."""

    def __init__(self, ns: str, node: str) -> None:
        self.ns = ns
        self.node = node
        pkg_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        code = f"import sys; sys.path.insert(0, {pkg_parent!r}); from nftdocker.verify.agent import agent_main; agent_main()"
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [tool("ip"), "netns", "exec", ns, sys.executable, "-S", "-c", code],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, start_new_session=True,
        )
        self.buf = b""

    def send(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg).encode() + b"\n")
        self.proc.stdin.flush()

    def recv(self, deadline: float) -> dict[str, Any]:
        import select

        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise EnvironmentProblem(f"the agent in {self.ns} did not answer in time")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.err.seek(0)
                    tail = self.err.read().decode(errors="replace").strip().splitlines()[-5:]
                    raise EnvironmentProblem(f"the agent in {self.ns} exited: {' / '.join(tail) or 'no message'}")
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def call(self, msg: dict[str, Any], seconds: float = 30) -> dict[str, Any]:
        self.send(msg)
        return self.recv(time.monotonic() + seconds)

    def close(self) -> None:
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.err.close()


# ---------------------------------------------------------------------- the agent side (runs in a namespace)


def _serve_tcp(sock: Any, name: str) -> None:
    while True:
        try:
            conn, peer = sock.accept()
        except OSError:
            return
        try:
            local = conn.getsockname()
            conn.sendall(f"nftdv {name} {local[0]} {local[1]} {peer[0]}\n".encode())
        except OSError:
            pass
        finally:
            conn.close()


def _serve_udp(sock: Any, name: str) -> None:
    local = sock.getsockname()
    while True:
        try:
            _, peer = sock.recvfrom(512)
            sock.sendto(f"nftdv {name} {local[0]} {local[1]} {peer[0]}\n".encode(), peer)
        except OSError:
            continue


def _outcome_from_reply(data: bytes) -> dict[str, str]:
    parts = data.decode(errors="replace").split()
    if len(parts) == 5 and parts[0] == "nftdv":
        return {"result": "open", "served": f"{parts[1]}:{parts[3]}", "seen": parts[4], "local": parts[2]}
    return {"result": "open", "detail": "unexpected reply " + data[:40].decode(errors="replace")}


def _probe_one(p: dict[str, Any], timeout: float) -> dict[str, str]:
    import errno
    import socket

    fam = socket.AF_INET6 if ":" in p["addr"] else socket.AF_INET
    typ = socket.SOCK_STREAM if p["proto"] == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(fam, typ)
    s.settimeout(timeout)
    try:
        s.connect((p["addr"], p["port"]))
        if typ == socket.SOCK_DGRAM:
            s.send(b"nftdv?\n")
        data = b""
        while b"\n" not in data:
            chunk = s.recv(256)
            if not chunk:
                break
            data += chunk
        if not data:
            return {"result": "silent"}
        return _outcome_from_reply(data)
    except ConnectionRefusedError:
        return {"result": "refused"}
    except socket.timeout:
        return {"result": "timeout"} if typ == socket.SOCK_DGRAM or not _connected(s) else {"result": "silent"}
    except OSError as e:
        if e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return {"result": "unreachable"}
        return {"result": "error", "detail": errno.errorcode.get(e.errno or 0, str(e))}
    finally:
        s.close()


def _connected(s: Any) -> bool:
    try:
        s.getpeername()
        return True
    except OSError:
        return False


def agent_main() -> None:
    """The agent: reads JSON commands on stdin, answers one JSON line each, exits at EOF."""
    import socket
    import threading
    from concurrent.futures import ThreadPoolExecutor as Pool

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = sys.stdout

    def reply(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    reply({"ready": True})
    socks = []
    for line in sys.stdin:
        msg = json.loads(line)
        op = msg.get("op")
        if op == "sysctl":
            from nftdocker.docker.generate import sysctl_path

            errors = []
            for key, value in msg["set"]:
                try:
                    with open(sysctl_path(key), "w") as f:
                        f.write(str(value))
                except OSError as e:
                    errors.append(f"{key}={value}: {e.strerror}")
            reply({"ok": not errors, "errors": errors})
        elif op == "serve":
            errors = []
            for proto, addr, port in msg["listen"]:
                fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
                s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((addr, port))
                    if proto == "tcp":
                        s.listen(128)
                except OSError as e:
                    errors.append(f"{proto} {addr} {port}: {e.strerror}")
                    s.close()
                    continue
                socks.append(s)
                target = _serve_tcp if proto == "tcp" else _serve_udp
                threading.Thread(target=target, args=(s, msg["name"]), daemon=True).start()
            reply({"ok": not errors, "errors": errors})
        elif op == "probe":
            timeout = float(msg.get("timeout", DEFAULT_TIMEOUT))
            probes = msg["probes"]
            with Pool(max_workers=max(1, min(int(msg.get("jobs", DEFAULT_JOBS)), len(probes) or 1))) as pool:
                results = list(pool.map(lambda p: _probe_one(p, timeout), probes))
            reply({"results": {str(p["id"]): r for p, r in zip(probes, results)}})
        else:
            reply({"error": f"unknown op {op!r}"})


if __name__ == "__main__":
    agent_main()
