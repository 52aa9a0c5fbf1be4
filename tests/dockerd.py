"""A private Docker Engine in a network namespace of its own, for tests.

    with TestDaemon("--userland-proxy=false") as d:
        d.docker("network", "create", "--subnet", "192.0.2.0/24", "net1")
        d.docker("run", "-d", "--name", "c1", "--network", "net1", "-p", "8080:80", IMAGE, "sleep", "3600")
        fetch_inspect(d.host)

What a TestDaemon owns, all named after its unique name (``nftdt-<pid>-<hex>``):

- the network namespace ``/run/netns/<name>`` (only ``lo``, brought up; dockerd makes docker0 and
  the user bridges inside it, so the host's interfaces and firewall are never touched);
- the directory ``$NFTDOCKER_TEST_DAEMON_DIR/<name>`` (default ``/tmp/nftdocker-dockerd``) holding
  the data root, exec root, pidfile, API socket, daemon.json, the CLI's config dir and dockerd.log;
- the cgroup ``/<name>`` in every cgroup hierarchy (dockerd's ``--cgroup-parent``), so that the
  containers' processes can be found and killed even when dockerd and its shims are gone.

dockerd runs with ``--iptables=false --ip6tables=false`` (nftdocker programs the firewall) and starts
and supervises its own containerd, whose socket, state and root live under the exec and data roots.
Only the network namespace is entered (``nsenter --net``): ``ip netns exec`` would also remount
/sys, which hides the host's cgroup mounts from runc.

Cleanup is bounded and leaves nothing behind: ``close()`` removes the containers through the API,
stops dockerd (SIGTERM, then SIGKILL), kills whatever is left in the namespace, in the cgroup or
names the directory on its command line (containerd, shims, docker-proxy, container processes),
removes the cgroups, unmounts everything mounted under the directory, deletes it and the namespace.
It runs on ``with`` exit, on fixture teardown, at interpreter exit, and SIGTERM/SIGHUP are turned
into KeyboardInterrupt while a daemon is up (when no other handler is installed) so that they unwind
through the same path. A process killed outright leaves its instance behind; the next TestDaemon
started on the machine (or ``python tests/dockerd.py --sweep``) finds it by its unheld lock and
removes it.

The engine is whatever ``dockerd`` is on PATH (Debian's docker.io: 20.10, API 1.41); the ``docker``
CLI negotiates down to it.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import fcntl
import http.client
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

IMAGE = "nftdocker-busybox:latest"
BUSYBOX = Path("/bin/busybox")
BASE_DIR = Path(os.environ.get("NFTDOCKER_TEST_DAEMON_DIR", "/tmp/nftdocker-dockerd"))
PREFIX = "nftdt-"
NETNS_DIR = Path("/run/netns")
_SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

__all__ = ["IMAGE", "TestDaemon", "DaemonError", "sweep_stale"]


class DaemonError(RuntimeError):
    """The test daemon could not be started or a docker command failed."""


def _tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=_SBIN_PATH)


def _unavailable_reason() -> str | None:
    if sys.platform != "linux":
        return "a test dockerd needs Linux"
    if os.geteuid() != 0:
        return "a test dockerd needs root (network namespaces, mounts, cgroups)"
    for tool, package in (("dockerd", "docker.io"), ("docker", "docker.io"), ("containerd", "containerd"),
                          ("runc", "runc"), ("nsenter", "util-linux"), ("ip", "iproute2")):
        if not _tool(tool):
            return f"{tool} is not installed (Debian package {package})"
    if not BUSYBOX.is_file():
        return f"{BUSYBOX} is missing (Debian package busybox-static)"
    return None


# --------------------------------------------------------------------------- small OS helpers

_libc = ctypes.CDLL(None, use_errno=True)
_MNT_DETACH = 2


def _umount(path: str) -> None:
    if _libc.umount2(path.encode(), _MNT_DETACH) != 0:
        e = ctypes.get_errno()
        if e not in (errno.EINVAL, errno.ENOENT):  # not a mount point (any more)
            raise OSError(e, os.strerror(e), path)


def _mountinfo() -> list[tuple[str, str]]:
    """(mount point, fs type) of this mount namespace, in mount order."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            point = fields[4].encode("latin-1", "surrogateescape").decode("unicode_escape")
            out.append((point, fields[sep + 1]))
    return out


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive for our purposes.
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill_all(pids: set[int], grace: float) -> None:
    """SIGTERM, wait up to grace seconds, SIGKILL what is left; wait a little for it to go."""
    pids = {p for p in pids if p > 1 and p != os.getpid()}
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            pids = {p for p in pids if _alive(p)}
            if pids:
                time.sleep(0.05)
        if not pids:
            return


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._path)
        except BaseException:
            s.close()
            raise
        self.sock = s


def _ping(sock_path: Path, timeout: float = 2.0) -> bool:
    conn = _UnixHTTPConnection(str(sock_path), timeout)
    try:
        conn.request("GET", "/_ping")
        r = conn.getresponse()
        return r.status == 200 and r.read().strip() == b"OK"
    except OSError:
        return False
    finally:
        conn.close()


_BUSYBOX_TAR: bytes | None = None


def _busybox_tar() -> bytes:
    """A root filesystem of busybox-static with a symlink per applet, as a tar (built once)."""
    global _BUSYBOX_TAR
    if _BUSYBOX_TAR is None:
        applets = subprocess.run([str(BUSYBOX), "--list-full"], capture_output=True, text=True, check=True).stdout.split()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            def add_dir(name: str, mode: int = 0o755) -> None:
                ti = tarfile.TarInfo(name)
                ti.type, ti.mode = tarfile.DIRTYPE, mode
                tar.addfile(ti)

            def add_file(name: str, data: bytes, mode: int = 0o644) -> None:
                ti = tarfile.TarInfo(name)
                ti.size, ti.mode = len(data), mode
                tar.addfile(ti, io.BytesIO(data))

            for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "root", "var", "var/www"):
                add_dir(d)
            add_dir("tmp", 0o1777)
            add_file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
            add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
            add_file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
            for a in applets:
                if a == "bin/busybox" or a.count("/") not in (1, 2):
                    continue
                ti = tarfile.TarInfo(a)
                ti.type, ti.mode = tarfile.SYMTYPE, 0o777
                ti.linkname = "/bin/busybox"
                tar.addfile(ti)
        _BUSYBOX_TAR = buf.getvalue()
    return _BUSYBOX_TAR


# --------------------------------------------------------------------------- signals and exit

_LIVE: set["TestDaemon"] = set()
_LIVE_LOCK = threading.Lock()
_SAVED_HANDLERS: dict[int, Any] = {}


def _on_signal(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def _register(d: "TestDaemon") -> None:
    with _LIVE_LOCK:
        _LIVE.add(d)
        if threading.current_thread() is threading.main_thread() and not _SAVED_HANDLERS:
            for sig in (signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(sig) == signal.SIG_DFL:
                    _SAVED_HANDLERS[sig] = signal.signal(sig, _on_signal)


def _unregister(d: "TestDaemon") -> None:
    with _LIVE_LOCK:
        _LIVE.discard(d)
        if not _LIVE and threading.current_thread() is threading.main_thread():
            for sig, old in _SAVED_HANDLERS.items():
                if signal.getsignal(sig) is _on_signal:
                    signal.signal(sig, old)
            _SAVED_HANDLERS.clear()


@atexit.register
def _close_all() -> None:
    for d in list(_LIVE):
        d.close()


# --------------------------------------------------------------------------- the daemon


class TestDaemon:
    """A dockerd in its own network namespace; see the module docstring."""

    __test__ = False  # not a pytest test class

    unavailable_reason = staticmethod(_unavailable_reason)

    def __init__(self, *extra_args: str, start_timeout: float = 60.0, stop_timeout: float = 20.0,
                 base_dir: Path | str | None = None, name: str | None = None) -> None:
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.name = name or f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.root = Path(base_dir or BASE_DIR) / self.name
        self.netns_path = NETNS_DIR / self.name
        self.data_root = self.root / "data"
        self.exec_root = self.root / "exec"
        self.socket_path = self.root / "docker.sock"
        self.pidfile = self.root / "docker.pid"
        self.log_path = self.root / "dockerd.log"
        self.config_file = self.root / "daemon.json"
        self.cli_config = self.root / "cli"
        self.host = f"unix://{self.socket_path}"
        self.cgroup_parent = f"/{self.name}"
        #: seconds from spawning dockerd until /_ping answered, per start; and for the image import
        self.start_seconds: list[float] = []
        self.image_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None
        self._closed = False

    # ---- public API

    @property
    def netns(self) -> str:
        return self.name

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    def env(self) -> dict[str, str]:
        """os.environ for a subprocess that should talk to this daemon (DOCKER_HOST set)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env.update(DOCKER_HOST=self.host, DOCKER_CONFIG=str(self.cli_config))
        return env

    def start(self) -> "TestDaemon":
        if self._closed:
            raise DaemonError(f"{self.name} is closed; make a new TestDaemon")
        if self._proc is not None:
            return self
        reason = _unavailable_reason()
        if reason:
            raise DaemonError(reason)
        sweep_stale(self.root.parent)
        _register(self)
        try:
            self._create()
            self._spawn()
            self._ensure_image()
        except BaseException:
            self.close()
            raise
        return self

    def restart(self, extra_args: list[str] | None = None) -> None:
        """Stop dockerd and start it again on the same data root (with new extra args if given).

        Without live-restore dockerd stops the containers on the way down (SIGTERM, then SIGKILL
        after each container's stop timeout: 10 s for a process that ignores SIGTERM, such as
        ``sleep`` as PID 1; run containers with ``--stop-timeout 1`` or ``--init`` to shorten it).
        """
        if extra_args is not None:
            self.extra_args = list(extra_args)
        self._stop_daemon()
        self._kill(self._own_processes())
        try:
            self._spawn()
        except BaseException:
            self.close()
            raise

    def docker(self, *args: str, check: bool = True, timeout: float = 60.0,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this daemon; raise DaemonError on failure when check."""
        cmd = [_tool("docker") or "docker", "-H", self.host, *args]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                               env=self.env(), stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise DaemonError(f"`docker {' '.join(args)}` did not finish in {timeout:g} s") from e
        if check and r.returncode != 0:
            raise DaemonError(f"`docker {' '.join(args)}` exited {r.returncode}: {r.stderr.strip()}")
        return r

    def docker_json(self, *args: str, **kw: Any) -> Any:
        return json.loads(self.docker(*args, **kw).stdout)

    def in_netns(self, *cmd: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run a command in the daemon's network namespace (not its other namespaces)."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 60)
        return subprocess.run(["nsenter", f"--net={self.netns_path}", *cmd], **kw)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        """Remove everything this daemon made. Idempotent, bounded, never raises (but re-raises a
        KeyboardInterrupt that arrived meanwhile, once everything is done)."""
        interrupted: BaseException | None = None
        steps = (self._remove_containers, self._stop_daemon, lambda: self._kill(self._own_processes()),
                 self._remove_cgroups, self._unmount, self._remove_netns, self._remove_root)
        for step in steps:
            try:
                step()
            except KeyboardInterrupt as e:
                interrupted = e
            except Exception as e:  # keep going: later steps still free what they can
                print(f"tests/dockerd.py: cleanup of {self.name}: {e}", file=sys.stderr)
        self._proc = None
        self._closed = True
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        _unregister(self)
        if interrupted is not None:
            raise interrupted

    def __enter__(self) -> "TestDaemon":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TestDaemon({self.name!r}, host={self.host!r}, pid={self.pid})"

    # ---- start

    def _create(self) -> None:
        self.root.mkdir(parents=True)
        # Locked before it is given its name, so that sweep_stale never sees it unheld.
        self._lock_fd = os.open(self.root / "lock.new", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(self._lock_fd, f"{os.getpid()}\n".encode())
        os.rename(self.root / "lock.new", self.root / "lock")
        for d in (self.data_root, self.exec_root, self.cli_config):
            d.mkdir(mode=0o700)
        # Our own (empty) daemon.json, so that the host's /etc/docker/daemon.json is not read.
        self.config_file.write_text("{}\n")
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True, timeout=30)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True, capture_output=True, timeout=30)

    def _spawn(self) -> None:
        self.pidfile.unlink(missing_ok=True)
        cmd = [
            _tool("nsenter") or "nsenter", f"--net={self.netns_path}",
            _tool("dockerd") or "dockerd",
            "--config-file", str(self.config_file),
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "--pidfile", str(self.pidfile),
            "-H", self.host,
            "--cgroup-parent", self.cgroup_parent,
            "--iptables=false", "--ip6tables=false",
            *self.extra_args,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_") and k != "NOTIFY_SOCKET"}
        env["PATH"] = _SBIN_PATH + ":" + env.get("PATH", "")
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            log.write(f"==== {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
            log.flush()
            # A session of its own: a Ctrl-C meant for pytest must not reach dockerd before close() does.
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          env=env, start_new_session=True, cwd=self.root)
        deadline = t0 + self.start_timeout
        while not _ping(self.socket_path, timeout=2.0):
            if self._proc.poll() is not None:
                raise DaemonError(f"dockerd exited {self._proc.returncode} while starting; "
                                  f"its log ({self.log_path}) ends:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise DaemonError(f"dockerd did not answer /_ping within {self.start_timeout:g} s; "
                                  f"its log ({self.log_path}) ends:\n{self.log_tail()}")
            time.sleep(0.05)
        self.start_seconds.append(time.monotonic() - t0)

    def _ensure_image(self) -> None:
        if self.docker("image", "inspect", IMAGE, check=False).returncode == 0:
            return
        t0 = time.monotonic()
        cmd = [_tool("docker") or "docker", "-H", self.host, "import",
               "--change", "ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin", "--change", 'CMD ["sh"]', "-", IMAGE]
        r = subprocess.run(cmd, input=_busybox_tar(), capture_output=True, timeout=120, env=self.env())
        if r.returncode != 0:
            raise DaemonError(f"docker import of {IMAGE} failed: {r.stderr.decode(errors='replace').strip()}")
        self.image_seconds = time.monotonic() - t0

    # ---- stop and clean up

    def _remove_containers(self) -> None:
        if self._proc is None or self._proc.poll() is not None or not _ping(self.socket_path, 2.0):
            return
        ids = self.docker("ps", "-aq", check=False, timeout=20).stdout.split()
        if ids:
            self.docker("rm", "-f", "-v", *ids, check=False, timeout=30)

    def _stop_daemon(self) -> None:
        p = self._proc
        self._proc = None
        if p is not None:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
            return
        # A daemon this object did not spawn (a stale instance): its pidfile, checked against its cmdline.
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        if str(self.root) in self._cmdline(pid):
            _kill_all({pid}, self.stop_timeout)

    @staticmethod
    def _cmdline(pid: int) -> str:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return ""

    def _own_processes(self) -> set[int]:
        """Processes in our netns, in our cgroup, or naming our directory on their command line."""
        found: set[int] = set()
        try:
            st = os.stat(self.netns_path)
            ns = (st.st_dev, st.st_ino)
        except OSError:
            ns = None
        root = str(self.root) + "/"
        for pid in _pids():
            if pid == os.getpid():
                continue
            if ns is not None:
                try:
                    st = os.stat(f"/proc/{pid}/ns/net")
                    if (st.st_dev, st.st_ino) == ns:
                        found.add(pid)
                        continue
                except OSError:
                    pass
            if root in self._cmdline(pid):
                found.add(pid)
        found |= self._cgroup_pids()
        return found

    def _kill(self, pids: set[int]) -> None:
        _kill_all(pids, grace=2.0)

    def _cgroup_dirs(self) -> list[Path]:
        dirs = []
        for point, fstype in _mountinfo():
            if fstype in ("cgroup", "cgroup2"):
                d = Path(point) / self.name
                if d.is_dir():
                    dirs.append(d)
        return dirs

    def _cgroup_pids(self) -> set[int]:
        pids: set[int] = set()
        for top in self._cgroup_dirs():
            for d, _, files in os.walk(top):
                if "cgroup.procs" in files:
                    try:
                        pids.update(int(x) for x in (Path(d) / "cgroup.procs").read_text().split())
                    except OSError:
                        pass
        return pids

    def _remove_cgroups(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            self._kill(self._cgroup_pids())
            left = []
            for top in self._cgroup_dirs():
                for d, _, _ in os.walk(top, topdown=False):
                    try:
                        os.rmdir(d)
                    except OSError as e:
                        left.append(f"{d}: {e.strerror}")
            if not left:
                return
            if time.monotonic() > deadline:
                raise DaemonError("cgroups left behind: " + "; ".join(left))
            time.sleep(0.1)

    def _unmount(self) -> None:
        root = str(self.root)
        for _ in range(5):
            points = [p for p, _ in _mountinfo() if p == root or p.startswith(root + "/")]
            if not points:
                return
            for p in reversed(points):  # the last mounted first: what is stacked on top goes first
                try:
                    _umount(p)
                except OSError:
                    pass
        raise DaemonError(f"still mounted under {root}: {points}")

    def _remove_root(self) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)

    def _remove_netns(self) -> None:
        if not self.netns_path.exists():
            return
        r = subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, text=True, timeout=30)
        if r.returncode != 0 and self.netns_path.exists():
            _umount(str(self.netns_path))
            self.netns_path.unlink()


def sweep_stale(base_dir: Path | str | None = None) -> list[str]:
    """Remove the instances whose owning process is gone (its lock is no longer held)."""
    base = Path(base_dir or BASE_DIR)
    removed = []
    # The directory is made first and its lock taken at once; it is removed last, after the namespace.
    names = sorted(p.name for p in base.glob(PREFIX + "*")) if base.is_dir() else []
    for name in names:
        lock = base / name / "lock"
        fd = None
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except FileNotFoundError:
            # No lock yet (or any more): give a just-starting instance a moment before calling it stale.
            try:
                if time.time() - os.stat(base / name).st_mtime < 60:
                    continue
            except OSError:
                continue
        except OSError:
            if fd is not None:
                os.close(fd)
            continue  # held: its owner is alive
        d = TestDaemon(name=name, base_dir=base, stop_timeout=2.0)
        d.close()
        if fd is not None:
            os.close(fd)
        removed.append(name)
    return removed


def main(argv: list[str]) -> int:
    """python tests/dockerd.py [--sweep] [DOCKERD-ARGS...]: run a test daemon until Ctrl-C."""
    if argv[:1] == ["--sweep"]:
        for name in sweep_stale():
            print("removed", name)
        return 0
    reason = _unavailable_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    with TestDaemon(*argv) as d:
        print(f"started {d.name} in {d.start_seconds[-1]:.2f} s (image import {d.image_seconds or 0:.2f} s)")
        print(f"export DOCKER_HOST={d.host}")
        print(f"nsenter --net={d.netns_path} bash   # a shell in its network namespace")
        print("Ctrl-C stops and removes it.")
        try:
            while d._proc is not None and d._proc.poll() is None:
                time.sleep(1)
            print("dockerd exited:\n" + d.log_tail(), file=sys.stderr)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
