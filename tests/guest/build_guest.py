#!/usr/bin/env python3
"""Build an initramfs that boots Debian's cloud kernel as an nftables-only guest.

The kernel comes from Debian's ``linux-image-*-cloud-amd64`` package (fetched with apt-get
download, extracted with dpkg-deb -x, never installed). Its netfilter parts are modules, so an
initramfs that carries only the dependency closure of ``REQUIRED_MODULES`` gives a kernel with
nf_tables and no x_tables, nft_compat, ip_tables or ip_set at all: those .ko files are simply
not in the image, and ``check_closure`` refuses to build one that has them.

Everything else is copied from this host's installed Debian packages: busybox-static, nft and
libnftables, xtables-nft-multi (as iptables-nft-restore) with its extensions, iproute2's ip,
Debian's python3.11 with its standard library (pruned) and python3-nftables. The project's
``nftdocker`` package, the guest steps and the test cases go into a second, small cpio archive
(the payload); the kernel unpacks concatenated archives, so the large base image is cached and
only the payload is rebuilt when the code changes.

It also boots the guest (``boot``: KVM first, TCG when KVM fails) and reads the framed console
that init.sh prints (``parse``). Used by tests/test_guest_kernel.py; also a script::

    python3 tests/guest/build_guest.py [--steps FILE] [--workdir DIR] [--boot]

prints the kernel and initramfs paths, and with --boot the run's summary (console in
DIR/console.txt). Standard library only, Python >= 3.9; root for apt-get.
"""
from __future__ import annotations

import argparse
import fcntl
import fnmatch
import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SHARED = REPO.parent / "shared"

#: What nftdocker's native tables and a bridge with veth need. nft_fib* is spelled out; the
#: reject, limit and redir expressions are nftables-native and cheap, so they are in too.
REQUIRED_MODULES = (
    "nfnetlink", "nf_tables", "nf_conntrack", "nf_nat",
    "nft_chain_nat", "nft_ct", "nft_fib", "nft_fib_ipv4", "nft_fib_ipv6", "nft_fib_inet",
    "nft_masq", "nft_nat", "nft_redir", "nft_limit",
    "nft_reject", "nft_reject_ipv4", "nft_reject_ipv6", "nft_reject_inet",
    "bridge", "br_netfilter", "veth",
)

#: The x_tables world. None of it may be in the image, as a module or built in.
FORBIDDEN_MODULES = (
    "x_tables", "nft_compat", "ip_tables", "ip6_tables", "arp_tables", "ebtables",
    "iptable_*", "ip6table_*", "arptable_*", "ebtable_*", "ebt_*", "xt_*", "ipt_*", "ip6t_*",
    "ip_set*",
)

#: Parts of the standard library no guest step needs.
STDLIB_PRUNE = (
    "test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "pydoc_data",
    "distutils", "venv", "config-*", "site-packages", "dist-packages", "turtle.py",
    "__phello__",
)
DYNLOAD_PRUNE = ("_tkinter*", "_test*", "xxlimited*", "_ctypes_test*", "_xxsubinterpreters*",
                 "_xxtestfuzz*", "_curses*", "readline*", "ossaudiodev*", "audioop*", "nis*",
                 # and their big libraries: OpenSSL (hashlib has built-in sha*/md5/blake2),
                 # Berkeley DB, SQLite, libcrypt, the CJK codecs
                 "_ssl.*", "_hashlib.*", "_dbm.*", "_gdbm.*", "_sqlite3.*", "_crypt.*",
                 "_codecs_cn.*", "_codecs_hk.*", "_codecs_jp.*", "_codecs_kr.*", "_codecs_tw.*",
                 "_codecs_iso2022.*")

#: busybox applets linked into /usr/bin (no modprobe or depmod: nothing loads modules behind
#: the steps' back; init.sh loads the closure explicitly).
BUSYBOX_APPLETS = (
    "sh", "ash", "awk", "basename", "cat", "chmod", "cp", "cut", "date", "dirname", "diff",
    "dmesg", "echo", "env", "false", "find", "grep", "head", "hostname", "insmod", "kill",
    "ln", "ls", "lsmod", "mkdir", "mktemp", "mount", "mv", "poweroff", "printf", "ps",
    "readlink", "reboot", "rm", "sed", "seq", "sleep", "sort", "sync", "sysctl", "tail",
    "tee", "test", "[", "timeout", "touch", "tr", "true", "umount", "uname", "uniq", "wc",
    "xargs",
)

GUEST_ETC = "etc/nftdocker-guest"   # modules list, manifest (no leading slash: cpio names)


class BuildError(Exception):
    """The guest image cannot be built on this host."""


class Unavailable(BuildError):
    """A host prerequisite (kernel package, qemu, a binary) cannot be had here."""


def log(msg: str) -> None:
    print(f"[guest-build] {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    env = os.environ.get("NFTDOCKER_GUEST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "nftdocker" / "guest"


# --------------------------------------------------------------------------- kernel package

@dataclass(frozen=True)
class Kernel:
    package: str          # linux-image-6.1.0-56-cloud-amd64
    version: str          # 6.1.192-2 (Debian version of the package)
    release: str          # 6.1.0-56-cloud-amd64 (uname -r)
    root: Path            # the extracted package

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def moddir(self) -> Path:
        return self.root / "lib" / "modules" / self.release

    @property
    def ident(self) -> str:
        return f"{self.package}_{self.version}"


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _resolve_kernel_package() -> str:
    """The package the linux-image-cloud-amd64 meta-package points at, asking apt once."""
    wanted = os.environ.get("NFTDOCKER_GUEST_KERNEL")
    if wanted:
        return wanted
    if not shutil.which("apt-cache"):
        raise Unavailable("apt-cache not found: cannot look up linux-image-cloud-amd64")
    for attempt in (0, 1):
        r = _run(["apt-cache", "depends", "linux-image-cloud-amd64"])
        m = re.search(r"Depends:\s*(linux-image-\S+-cloud-amd64)\b", r.stdout)
        if m:
            return m.group(1)
        if attempt == 0 and os.geteuid() == 0:
            log("apt-cache knows no linux-image-cloud-amd64; running apt-get update once")
            _run(["apt-get", "update"], timeout=300)
    raise Unavailable("no linux-image-*-cloud-amd64 package known to apt "
                      f"(apt-cache depends said: {r.stdout.strip() or r.stderr.strip()})")


def _kernel_from_dir(d: Path) -> Kernel | None:
    meta = d / "kernel.json"
    if not meta.is_file():
        return None
    m = json.loads(meta.read_text())
    k = Kernel(m["package"], m["version"], m["release"], d / "root")
    return k if k.vmlinuz.is_file() and k.moddir.is_dir() else None


def get_kernel(cache: Path | None = None) -> Kernel:
    """The extracted kernel package, downloaded once into the cache.

    A kernel already in the cache is used without asking apt (newest first), unless
    NFTDOCKER_GUEST_KERNEL names a package; NFTDOCKER_GUEST_KERNEL_DEB may name a local .deb.
    """
    cache = (cache or cache_root()) / "kernel"
    cache.mkdir(parents=True, exist_ok=True)
    deb_env = os.environ.get("NFTDOCKER_GUEST_KERNEL_DEB")
    wanted = os.environ.get("NFTDOCKER_GUEST_KERNEL")
    if not deb_env:
        cached = sorted((k for d in cache.iterdir() if d.is_dir() and (k := _kernel_from_dir(d))),
                        key=lambda k: (k.root.parent / "kernel.json").stat().st_mtime, reverse=True)
        cached = [k for k in cached if not wanted or k.package == wanted]
        if cached:
            return cached[0]
    for tool in ("dpkg-deb",) + (() if deb_env else ("apt-get",)):
        if not shutil.which(tool):
            raise Unavailable(f"{tool} not found: cannot fetch the kernel package")
    tmp = cache / f".download-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if deb_env:
            deb = Path(deb_env)
        else:
            pkg = _resolve_kernel_package()
            log(f"downloading {pkg}")
            r = _run(["apt-get", "download", "-o", "APT::Sandbox::User=root", pkg], cwd=tmp,
                     timeout=600)
            debs = list(tmp.glob("*.deb"))
            if r.returncode != 0 or not debs:
                raise Unavailable(f"apt-get download {pkg} failed: {r.stderr.strip()[-500:]}")
            deb = debs[0]
        fields = _run(["dpkg-deb", "-f", str(deb), "Package", "Version"]).stdout
        info = dict(line.split(": ", 1) for line in fields.strip().splitlines())
        dest = cache / f"{info['Package']}_{info['Version']}"
        if (kernel := _kernel_from_dir(dest)) is not None:
            return kernel                                 # that .deb, extracted before
        shutil.rmtree(dest, ignore_errors=True)
        (tmp / "root").mkdir()
        log(f"extracting {deb.name}")
        r = _run(["dpkg-deb", "-x", str(deb), str(tmp / "root")])
        if r.returncode != 0:
            raise BuildError(f"dpkg-deb -x {deb} failed: {r.stderr.strip()}")
        releases = [p.name for p in (tmp / "root" / "lib" / "modules").iterdir()]
        if len(releases) != 1:
            raise BuildError(f"{deb.name}: expected one /lib/modules/<release>, got {releases}")
        (tmp / "kernel.json").write_text(json.dumps(
            {"package": info["Package"], "version": info["Version"], "release": releases[0]}))
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    kernel = _kernel_from_dir(dest)
    if kernel is None:
        raise BuildError(f"{dest}: extracted package has no vmlinuz or modules")
    return kernel


# --------------------------------------------------------------------------- modules

def module_name(path: str | Path) -> str:
    name = Path(path).name
    for ext in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return name.replace("-", "_")


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        import lzma
        data = lzma.decompress(data)
    elif path.name.endswith(".gz"):
        data = gzip.decompress(data)
    elif path.name.endswith(".zst"):
        raise BuildError(f"{path}: zstd-compressed modules are not supported")
    return data


def modinfo(data: bytes) -> dict[str, list[str]]:
    """The .modinfo section of an ELF64 kernel module, as key -> values."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise BuildError("not an ELF64 module")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, off, size = struct.unpack_from("<IIQQQQ", data,
                                                                   shoff + i * shentsize)
        return name, off, size

    _, stroff, _ = section(shstrndx)
    for i in range(shnum):
        name, off, size = section(i)
        end = data.index(b"\0", stroff + name)
        if data[stroff + name:end] == b".modinfo":
            info: dict[str, list[str]] = {}
            for item in data[off:off + size].split(b"\0"):
                if b"=" in item:
                    k, v = item.decode("utf-8", "replace").split("=", 1)
                    info.setdefault(k, []).append(v)
            return info
    return {}


def is_forbidden(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) for pat in FORBIDDEN_MODULES)


def module_index(kernel: Kernel) -> tuple[dict[str, Path], set[str]]:
    """name -> .ko path for every module of the package, and the names built into vmlinuz."""
    index = {module_name(p): p for p in (kernel.moddir / "kernel").rglob("*.ko*")}
    builtin_file = kernel.moddir / "modules.builtin"
    builtin = {module_name(line) for line in builtin_file.read_text().split()} \
        if builtin_file.is_file() else set()
    return index, builtin


def module_closure(kernel: Kernel, required=REQUIRED_MODULES) -> list[tuple[str, Path]]:
    """The dependency closure of ``required``, dependencies first (the order to insmod)."""
    index, builtin = module_index(kernel)
    order: list[tuple[str, Path]] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == "done" or name in builtin:
            return
        if state.get(name) == "visiting":
            raise BuildError(f"module dependency cycle: {' -> '.join(chain + (name,))}")
        if name not in index:
            raise BuildError(f"module {name} (needed by {' -> '.join(chain) or 'the list'}) "
                             f"is neither in {kernel.package} nor built in")
        state[name] = "visiting"
        deps = modinfo(_read_module(index[name])).get("depends", [""])[0]
        for dep in filter(None, deps.split(",")):
            visit(dep.replace("-", "_"), chain + (name,))
        state[name] = "done"
        order.append((name, index[name]))

    for name in required:
        visit(name, ())
    check_closure([n for n, _ in order], builtin)
    return order


def check_closure(names: list[str], builtin: set[str] = frozenset()) -> None:
    bad = sorted(n for n in set(names) | set(builtin) if is_forbidden(n))
    if bad:
        raise BuildError(f"x_tables modules would be in the guest (loadable or built in): {bad}")


# --------------------------------------------------------------------------- cpio image

@dataclass
class Entry:
    kind: str                  # file | dir | symlink | char
    mode: int = 0o644
    src: Path | None = None    # file copied from the host
    data: bytes | None = None  # file made here
    target: str = ""           # symlink
    rdev: tuple[int, int] = (0, 0)
    mtime: int = 0


@dataclass
class Image:
    """A set of files for a newc cpio archive, keyed by path without the leading slash."""
    entries: dict[str, Entry] = field(default_factory=dict)

    def canonical(self, dest: str) -> str:
        """``dest`` with the image's own symlinks in its directories resolved: the kernel
        unpacks in name order, so lib/modules/x would come before usr/lib exists."""
        parts = [p for p in dest.split("/") if p]
        cur: list[str] = []
        hops = 0
        for part in parts[:-1]:
            cur.append(part)
            e = self.entries.get("/".join(cur))
            while e is not None and e.kind == "symlink":
                hops += 1
                if hops > 40:
                    raise BuildError(f"{dest}: symlink loop in the image")
                base = [] if e.target.startswith("/") else cur[:-1]
                cur = os.path.normpath("/".join(base + [e.target])).strip("/").split("/")
                e = self.entries.get("/".join(cur))
        return "/".join(cur + parts[-1:])

    def _put(self, dest: str, entry: Entry) -> None:
        dest = self.canonical(dest)
        old = self.entries.get(dest)
        if old and old.kind == "dir" and entry.kind == "dir":
            return
        self.entries[dest] = entry

    def add_dir(self, dest: str, mode: int = 0o755) -> None:
        self._put(dest, Entry("dir", mode))

    def add_data(self, dest: str, data: bytes | str, mode: int = 0o644) -> None:
        if isinstance(data, str):
            data = data.encode()
        self._put(dest, Entry("file", mode, data=data, mtime=int(time.time())))

    def add_symlink(self, dest: str, target: str) -> None:
        self._put(dest, Entry("symlink", 0o777, target=target))

    def add_char(self, dest: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._put(dest, Entry("char", mode, rdev=(major, minor)))

    def add_file(self, src: Path, dest: str, mode: int | None = None) -> None:
        st = src.stat()
        self._put(dest, Entry("file", stat.S_IMODE(st.st_mode) if mode is None else mode,
                              src=src, mtime=int(st.st_mtime)))

    def add_host(self, path: str | Path, _seen: set | None = None) -> None:
        """Copy a host path to the same place, recreating every symlink on the way to it
        (/lib -> usr/lib, libfoo.so.1 -> libfoo.so.1.2.3) so the loader finds it as on the host."""
        seen = set() if _seen is None else _seen
        path = os.path.abspath(path)
        if path in seen:
            return
        seen.add(path)
        parts = [p for p in path.split("/") if p]
        cur = "/"
        for i, part in enumerate(parts):
            cur = os.path.join(cur, part)
            if os.path.islink(cur):
                target = os.readlink(cur)
                self.add_symlink(cur, target)
                resolved = os.path.normpath(os.path.join(os.path.dirname(cur), target))
                self.add_host(os.path.join(resolved, *parts[i + 1:]), seen)
                return
        if os.path.isdir(path):
            self.add_dir(path)
        elif os.path.isfile(path):
            self.add_file(Path(path), path)
        else:
            raise BuildError(f"{path}: not on this host")

    def add_tree(self, src: Path, dest: str | None = None, prune=()) -> None:
        """Copy a directory tree (symlinks inside it stay symlinks); ``prune`` names are skipped
        at any depth, and so is optimized byte code (*.opt-N.pyc)."""
        dest = str(src) if dest is None else dest
        if dest == str(src):
            self.add_host(src)
        for dirpath, dirnames, filenames in os.walk(src):
            out = os.path.normpath(os.path.join(dest, os.path.relpath(dirpath, src)))
            links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
            dirnames[:] = [d for d in dirnames if d not in links and not _matches(d, prune)]
            self.add_dir(out)
            for name in filenames + links:
                if _matches(name, prune) or ".opt-" in name:
                    continue
                p = os.path.join(dirpath, name)
                if os.path.islink(p):
                    self.add_symlink(os.path.join(out, name), os.readlink(p))
                else:
                    self.add_file(Path(p), os.path.join(out, name))

    def add_elf(self, path: str | Path) -> None:
        """A host executable or library and every shared library ldd says it needs."""
        self.add_host(path)
        for lib in shared_libs(path):
            self.add_host(lib)

    def write(self, out: Path, level: int = 6) -> None:
        """Write a gzip-compressed newc archive (parents before children, owner root)."""
        names: dict[str, Entry] = {}
        for name in self.entries:
            parts = name.split("/")
            for i in range(1, len(parts)):
                names.setdefault("/".join(parts[:i]), Entry("dir", 0o755))
        names.update(self.entries)
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb",
                                                   compresslevel=level, mtime=0) as gz:
            for ino, name in enumerate(sorted(names, key=lambda n: n.split("/")), start=1):
                e = names[name]
                if e.kind == "file":
                    body = e.data if e.data is not None else e.src.read_bytes()
                    mode = stat.S_IFREG | e.mode
                elif e.kind == "dir":
                    body, mode = b"", stat.S_IFDIR | e.mode
                elif e.kind == "symlink":
                    body, mode = e.target.encode(), stat.S_IFLNK | 0o777
                else:
                    body, mode = b"", stat.S_IFCHR | e.mode
                _cpio_entry(gz, name, ino, mode, e.mtime, body, e.rdev)
            _cpio_entry(gz, "TRAILER!!!", 0, 0, 0, b"", (0, 0))
        tmp.replace(out)


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _cpio_entry(out, name: str, ino: int, mode: int, mtime: int, body: bytes,
                rdev: tuple[int, int]) -> None:
    nameb = name.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(mode) else 1
    fields = (ino, mode, 0, 0, nlink, mtime, len(body), 0, 0, rdev[0], rdev[1], len(nameb), 0)
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    out.write(header + nameb + b"\0" * (-(len(header) + len(nameb)) % 4))
    out.write(body + b"\0" * (-len(body) % 4))


def shared_libs(path: str | Path) -> list[str]:
    r = _run(["ldd", str(path)])
    if "not a dynamic executable" in r.stdout + r.stderr or "statically linked" in r.stdout:
        return []
    if r.returncode != 0:
        raise BuildError(f"ldd {path} failed: {r.stderr.strip()}")
    libs = []
    for line in r.stdout.splitlines():
        if "not found" in line:
            raise BuildError(f"ldd {path}: {line.strip()}")
        m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if m:
            libs.append(m.group(1))
    return libs


# --------------------------------------------------------------------------- host software

def _host_tool(name: str, *candidates: str) -> str:
    for c in candidates:
        if os.path.isfile(c):
            return c
    found = shutil.which(name)
    if not found:
        raise Unavailable(f"{name} not installed on this host ({' or '.join(candidates)})")
    return found


def guest_python() -> tuple[str, str]:
    """Debian's interpreter (the one python3-nftables is installed for) and its X.Y."""
    py = os.path.realpath(os.environ.get("NFTDOCKER_GUEST_PYTHON", "/usr/bin/python3"))
    m = re.fullmatch(r".*/python(\d+\.\d+)", py)
    if not m or not os.path.isfile(py):
        raise Unavailable(f"Debian's python3 not found (got {py})")
    return py, m.group(1)


def host_inputs() -> dict[str, str]:
    """The host files the base image is copied from, for the cache key."""
    py, ver = guest_python()
    paths = {
        "busybox": _host_tool("busybox", "/usr/bin/busybox", "/bin/busybox"),
        "nft": _host_tool("nft", "/usr/sbin/nft"),
        "xtables": _host_tool("xtables-nft-multi", "/usr/sbin/xtables-nft-multi"),
        "ip": _host_tool("ip", "/usr/sbin/ip", "/usr/bin/ip", "/sbin/ip", "/bin/ip"),
        "python": py,
        "stdlib": f"/usr/lib/python{ver}/os.py",
        "nftables": "/usr/lib/python3/dist-packages/nftables/nftables.py",
    }
    for what, p in paths.items():
        if not os.path.isfile(p):
            raise Unavailable(f"{what}: {p} is not installed")
    return paths


def _fingerprint(paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        p = os.path.realpath(p)
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def build_base(kernel: Kernel, modules: list[tuple[str, Path]], out: Path) -> dict:
    """The big, rarely changing archive: binaries, libraries, Python, kernel modules."""
    hosts = host_inputs()
    img = Image()
    for d in ("dev", "proc", "sys", "tmp", "run", "root", "etc", "usr/bin", "usr/sbin"):
        img.add_dir(d, 0o1777 if d == "tmp" else 0o755)
    img.add_char("dev/console", 5, 1)
    img.add_char("dev/null", 1, 3, 0o666)
    img.add_char("dev/ttyS0", 4, 64)
    # Merged /usr like the host: /bin -> usr/bin and so on.
    for link in ("/bin", "/sbin", "/lib", "/lib64"):
        if os.path.islink(link):
            img.add_symlink(link, os.readlink(link))

    img.add_host(hosts["busybox"])
    bb = os.path.realpath(hosts["busybox"])
    if shared_libs(bb):
        raise Unavailable(f"{bb} is not statically linked: install busybox-static")
    for applet in BUSYBOX_APPLETS:
        img.add_symlink(f"usr/bin/{applet}", bb)

    img.add_elf(hosts["nft"])
    img.add_elf(hosts["ip"])
    if hosts["ip"] != "/usr/sbin/ip":       # steps.sh calls it by this path
        img.add_symlink("usr/sbin/ip", os.path.realpath(hosts["ip"]))
    img.add_elf(hosts["xtables"])
    xdir = os.path.dirname(hosts["xtables"])
    for tool in ("iptables-nft-restore", "ip6tables-nft-restore", "iptables-nft",
                 "ip6tables-nft", "iptables-nft-save", "ip6tables-nft-save"):
        img.add_symlink(os.path.join(xdir, tool), "xtables-nft-multi")
    # iptables-nft's extensions (libxt_conntrack.so, ...): userspace is complete, so a refusal
    # can only come from the kernel.
    ext_dirs = [p for p in Path("/usr/lib").glob("*/xtables") if p.is_dir()]
    if not ext_dirs:
        raise Unavailable("iptables' extension directory /usr/lib/*/xtables not found")
    for ext_dir in ext_dirs:
        img.add_tree(ext_dir)
        for so in ext_dir.glob("*.so"):
            for lib in shared_libs(so):
                img.add_host(lib)

    py, ver = guest_python()
    img.add_elf(py)
    img.add_symlink("usr/bin/python3", os.path.basename(py))
    stdlib = Path(f"/usr/lib/python{ver}")
    img.add_tree(stdlib, prune=STDLIB_PRUNE + DYNLOAD_PRUNE)
    for so in (stdlib / "lib-dynload").glob("*.so"):
        if not _matches(so.name, DYNLOAD_PRUNE):
            for lib in shared_libs(so):
                img.add_host(lib)
    img.add_tree(Path("/usr/lib/python3/dist-packages/nftables"))
    for etc in ("/etc/protocols", "/etc/services", "/etc/ethertypes"):
        if os.path.isfile(etc):
            img.add_host(etc)
    img.add_data("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
    img.add_data("etc/group", "root:x:0:\n")
    img.add_data("etc/hostname", "nftdocker-guest\n")

    listing = []
    for name, path in modules:
        rel = str(path.relative_to(kernel.root))
        dest = re.sub(r"\.ko\.(xz|gz|zst)$", ".ko", rel)   # busybox insmod wants plain .ko
        if dest == rel:
            img.add_file(path, dest, 0o644)
        else:
            img.add_data(dest, _read_module(path))
        listing.append(f"{name} /{dest}\n")
    img.add_data(f"{GUEST_ETC}/modules", "".join(listing))
    check_closure([module_name(n) for n in img.entries if re.search(r"\.ko$", n)])
    img.write(out)
    return {"files": len(img.entries),
            "unpacked_bytes": sum(len(e.data) if e.data is not None else
                                  (e.src.stat().st_size if e.src else 0)
                                  for e in img.entries.values())}


# --------------------------------------------------------------------------- payload

def find_cases(repo: Path = REPO, shared: Path = SHARED) -> tuple[str, list[Path]]:
    """The cases to run: rulesets/*/ when the project has any, else the shared references."""
    for source in (repo / "rulesets", shared / "reference"):
        cases = sorted(p.parent for p in source.glob("*/scenario.toml"))
        if cases:
            return str(source), cases
    raise Unavailable(f"no cases: neither {repo}/rulesets/*/scenario.toml nor "
                      f"{shared}/reference/*/scenario.toml exists")


def build_payload(steps: Path, out: Path, repo: Path = REPO, shared: Path = SHARED) -> dict:
    """The small archive: /init, the steps, the nftdocker package, the cases and Docker's rules."""
    img = Image()
    img.add_file(HERE / "init.sh", "init", 0o755)
    img.add_file(steps, f"{GUEST_ETC}/steps.sh", 0o755)
    img.add_file(HERE / "cases.py", f"{GUEST_ETC}/cases.py", 0o644)
    pkg = repo / "nftdocker"
    if pkg.is_dir():
        img.add_tree(pkg, "opt/nftdocker/nftdocker", prune=("__pycache__", "*.pyc"))
    source, cases = find_cases(repo, shared)
    docker = []
    for case in cases:
        for name in ("scenario.toml", "iptables-save.txt", "ip6tables-save.txt"):
            if (case / name).is_file():
                img.add_file(case / name, f"cases/{case.name}/{name}", 0o644)
        ref = shared / "reference" / case.name
        if ref.is_dir():
            docker.append(case.name)
            for name in ("iptables-save.txt", "ip6tables-save.txt"):
                if (ref / name).is_file():
                    img.add_file(ref / name, f"docker/{case.name}/{name}", 0o644)
    manifest = {"cases_from": source, "cases": [c.name for c in cases], "docker_rules": docker,
                "nftdocker": pkg.is_dir(), "steps": str(steps)}
    img.add_data(f"{GUEST_ETC}/manifest.json", json.dumps(manifest, indent=1))
    img.write(out)
    return manifest


# --------------------------------------------------------------------------- boot and parse

QEMU = "qemu-system-x86_64"
MARK = re.compile(r"^@@(INIT|BEGIN|END|DONE)(?: (\S+))?(.*)$")


@dataclass
class Attempt:
    accel: str
    seconds: float
    returncode: int | None
    reached_init: bool
    note: str = ""          # why it was given up, qemu's last words


@dataclass
class Boot:
    accel: str              # the accelerator of the run that counts
    transcript: str         # the serial console, \r removed
    seconds: float          # qemu start to exit, that run
    returncode: int | None  # None: killed at the timeout
    timed_out: bool
    attempts: list[Attempt]


def accelerators() -> list[str]:
    """KVM first where /dev/kvm is usable, then TCG; NFTDOCKER_GUEST_ACCEL=kvm|tcg forces one."""
    forced = os.environ.get("NFTDOCKER_GUEST_ACCEL")
    if forced:
        return [forced]
    kvm = os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK)
    return ["kvm", "tcg"] if kvm else ["tcg"]


def qemu_command(guest: Guest, accel: str) -> list[str]:
    qemu = shutil.which(QEMU)
    if not qemu:
        raise Unavailable(f"{QEMU} not installed (Debian package qemu-system-x86)")
    cpu = ["-cpu", "host"] if accel == "kvm" else []
    return [qemu, "-accel", accel, *cpu, "-m", "1024", "-smp", "1", "-nodefaults",
            "-display", "none", "-serial", "stdio", "-no-reboot",
            "-kernel", str(guest.kernel.vmlinuz), "-initrd", str(guest.initrd),
            "-append", "console=ttyS0 quiet panic=-1"]


def _run_qemu(cmd: list[str], deadline: float, probe: float | None) -> tuple[bytes, Attempt]:
    """Run qemu until it exits or ``deadline``; with ``probe``, give up unless @@INIT shows
    within that many seconds. The console is returned as it came."""
    import selectors
    t0 = time.monotonic()
    err = bytearray()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    sel.register(proc.stderr, selectors.EVENT_READ, "err")
    out = bytearray()
    seen_init = False
    note = ""
    open_streams = 2
    try:
        while open_streams:
            now = time.monotonic()
            limit = deadline if seen_init or probe is None else min(deadline, t0 + probe)
            if now >= limit:
                note = ("no @@INIT within %.0f s probe" % probe if limit < deadline
                        else "timed out")
                break
            for key, _ in sel.select(timeout=min(1.0, limit - now)):
                chunk = os.read(key.fileobj.fileno(), 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    open_streams -= 1
                    continue
                if key.data == "err":
                    err += chunk
                    continue
                out += chunk
                if not seen_init and b"@@INIT" in out:
                    seen_init = True
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
    said = err.decode("utf-8", "replace").strip().splitlines()[-1:]
    if said:
        note = f"{note}; qemu said: {said[0]}" if note else said[0]
    rc = None if note.startswith(("timed out", "no @@INIT")) else proc.returncode
    return bytes(out), Attempt(cmd[cmd.index("-accel") + 1], round(time.monotonic() - t0, 3),
                               rc, seen_init, note)


def boot(guest: Guest, timeout: float = 240, probe: float = 15) -> Boot:
    """Boot the guest, KVM first when /dev/kvm exists: a KVM run that shows no @@INIT within
    ``probe`` seconds (qemu 7.2 aborts on a refused MSR write, or hangs, on nested KVM) is
    killed and the guest booted again under TCG. ``timeout`` bounds everything."""
    deadline = time.monotonic() + timeout
    attempts: list[Attempt] = []
    accels = accelerators()
    for n, accel in enumerate(accels):
        last = n == len(accels) - 1
        raw, att = _run_qemu(qemu_command(guest, accel), deadline, None if last else probe)
        attempts.append(att)
        if att.reached_init or last:
            text = raw.decode("utf-8", "replace").replace("\r", "")
            return Boot(accel, text, att.seconds, att.returncode,
                        att.note.startswith("timed out"), attempts)
        log(f"{accel} gave up after {att.seconds:.1f} s ({att.note}); falling back")
    raise AssertionError("unreachable")


@dataclass
class Step:
    name: str
    rc: int | None          # None: no @@END (the guest died or hung in it)
    output: str
    t_begin: float
    t_end: float | None

    @property
    def seconds(self) -> float | None:
        return None if self.t_end is None else round(self.t_end - self.t_begin, 3)


@dataclass
class Transcript:
    steps: dict[str, Step] = field(default_factory=dict)
    init_t: float | None = None
    done_t: float | None = None
    kernel: str = ""
    problems: list[str] = field(default_factory=list)   # stray lines, broken framing

    def matching(self, prefix: str) -> list[Step]:
        return [s for n, s in self.steps.items() if n.startswith(prefix)]


def _t(rest: str) -> float | None:
    m = re.search(r"\bt=([0-9.]+)", rest)
    return float(m.group(1)) if m else None


def parse(text: str) -> Transcript:
    """Read the console: steps between @@BEGIN/@@END, everything after @@INIT accounted for."""
    tr = Transcript()
    cur: Step | None = None
    body: list[str] = []
    for line in text.split("\n"):
        m = MARK.match(line)
        kind = m.group(1) if m else None
        if tr.init_t is None:
            if kind == "INIT":
                tr.init_t = _t(line)
                tr.kernel = (re.search(r"kernel=(\S+)", line) or [None, ""])[1]
            continue                      # the kernel's own boot lines
        if cur is not None:
            if kind == "END" and m.group(2) == cur.name:
                rc = re.search(r"\brc=(-?\d+)", m.group(3))
                cur.rc = int(rc.group(1)) if rc else None
                cur.t_end = _t(m.group(3))
                cur.output = "\n".join(body)
                cur, body = None, []
            elif kind in ("BEGIN", "END", "DONE", "INIT"):
                tr.problems.append(f"step {cur.name}: unexpected marker inside it: {line!r}")
                body.append(line)
            else:
                body.append(line)
            continue
        if kind == "BEGIN":
            name = m.group(2)
            if name in tr.steps:
                tr.problems.append(f"step {name} ran twice")
            cur = Step(name, None, "", _t(m.group(3)) or 0.0, None)
            tr.steps[name] = cur
        elif kind == "DONE":
            tr.done_t = _t(line)
        elif line.strip() and tr.done_t is None:
            tr.problems.append(f"unexpected console line outside any step: {line!r}")
    if tr.init_t is None:
        tr.problems.append("the guest's init never started (no @@INIT)")
    if cur is not None:
        cur.output = "\n".join(body)
        tr.problems.append(f"step {cur.name} never ended (hang or crash inside it)")
    if tr.init_t is not None and tr.done_t is None:
        tr.problems.append("the guest never reached @@DONE")
    return tr


def proc_modules(tr: Transcript) -> list[str]:
    step = tr.steps.get("modules")
    return [line.split()[0] for line in step.output.splitlines() if line.strip()] if step else []


def nat_rule_count(save_text: str) -> int:
    """-A lines in the *nat block of an iptables-save text."""
    table, n = None, 0
    for line in save_text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif table == "nat" and line.startswith("-A "):
            n += 1
    return n


def summarize(guest: Guest, run: Boot, tr: Transcript) -> dict:
    """What the run showed, for the results file and the test's report."""
    restores, lines = {}, {}
    for step in tr.matching("restore"):
        restores[step.name] = {"rc": step.rc, "loaded": step.rc == 0,
                               "message": step.output.strip()}
        if step.rc != 0:
            for line in step.output.splitlines():
                line = re.sub(r"^line \d+:", "line N:", line.strip())
                if line:
                    lines[line] = lines.get(line, 0) + 1
    return {
        "kernel": {"package": guest.kernel.ident, "release": tr.kernel or guest.kernel.release},
        "accel": run.accel,
        "attempts": [vars(a) for a in run.attempts],
        "initrd": {"bytes": guest.size, "base_cached": guest.base_cached,
                   "build_timings": guest.timings},
        "qemu_seconds": run.seconds,
        "guest": {"init_t": tr.init_t, "done_t": tr.done_t},
        "cases_from": guest.manifest.get("cases_from"),
        "modules_expected": guest.modules,
        "modules_loaded": proc_modules(tr),
        "steps": {n: {"rc": s.rc, "s": s.seconds} for n, s in tr.steps.items()
                  if not n.startswith("insmod/")},
        "restores": restores,
        "refusal_lines": dict(sorted(lines.items(), key=lambda kv: -kv[1])),
        "problems": tr.problems,
    }


# --------------------------------------------------------------------------- entry point

@dataclass
class Guest:
    kernel: Kernel
    initrd: Path            # base + payload, ready for qemu -initrd
    modules: list[str]      # insmod order
    manifest: dict
    timings: dict
    base_cached: bool
    size: int               # bytes of initrd


def build(workdir: Path, steps: Path | None = None, cache: Path | None = None) -> Guest:
    """Build (or take from the cache) everything needed to boot: kernel, modules, initramfs.

    The base image is cached under the cache dir, keyed by this file, the kernel package, the
    module list and the host binaries' identity; the payload is rebuilt into ``workdir``.
    """
    t0 = time.monotonic()
    cache = cache or cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    steps = Path(steps or os.environ.get("NFTDOCKER_GUEST_STEPS") or HERE / "steps.sh")
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        kernel = get_kernel(cache)
        t_kernel = time.monotonic()
        modules = module_closure(kernel)
        hosts = host_inputs()
        key = hashlib.sha256("\n".join([
            Path(__file__).read_text(), kernel.ident, ",".join(n for n, _ in modules),
            _fingerprint(hosts.values()),
        ]).encode()).hexdigest()[:16]
        base = cache / f"base-{key}.cpio.gz"
        base_cached = base.is_file()
        if not base_cached:
            log(f"building base image {base.name}")
            info = build_base(kernel, modules, base)
            (cache / f"base-{key}.json").write_text(json.dumps(info))
            _prune(cache, "base-*.cpio.gz", keep=base)
        os.utime(base)   # most recently used
    t_base = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    payload = workdir / "payload.cpio.gz"
    manifest = build_payload(steps, payload)
    initrd = workdir / "initrd.img"
    with open(initrd, "wb") as out:
        for part in (base, payload):
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out)
    payload.unlink()
    t_end = time.monotonic()
    return Guest(kernel, initrd, [n for n, _ in modules], manifest,
                 {"kernel_s": round(t_kernel - t0, 3), "base_s": round(t_base - t_kernel, 3),
                  "payload_s": round(t_end - t_base, 3), "total_s": round(t_end - t0, 3)},
                 base_cached, initrd.stat().st_size)


def _prune(cache: Path, pattern: str, keep: Path, n: int = 2) -> None:
    """Keep the ``n`` most recently used base images."""
    olds = sorted((p for p in cache.glob(pattern) if p != keep),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    for p in olds[n - 1:]:
        p.unlink(missing_ok=True)
        p.with_name(p.name.replace(".cpio.gz", ".json")).unlink(missing_ok=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=Path, help="guest steps script (default tests/guest/steps.sh)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/nftdocker-guest-build"),
                    help="where initrd.img is written")
    ap.add_argument("--boot", action="store_true",
                    help="also boot it: transcript to WORKDIR/console.txt, summary printed")
    ap.add_argument("--timeout", type=float, default=240)
    args = ap.parse_args(argv)
    try:
        g = build(args.workdir, args.steps)
        if args.boot:
            run = boot(g, args.timeout)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.boot:
        (args.workdir / "console.txt").write_text(run.transcript)
        tr = parse(run.transcript)
        print(json.dumps(summarize(g, run, tr), indent=1))
        return 0 if not tr.problems and run.returncode == 0 else 1
    print(json.dumps({"kernel": str(g.kernel.vmlinuz), "initrd": str(g.initrd),
                      "initrd_bytes": g.size, "base_cached": g.base_cached,
                      "modules": g.modules, "timings": g.timings, "manifest": g.manifest},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
