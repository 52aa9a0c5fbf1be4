"""Resume generation where the last apply left it: replay only the containers a scenario appends.

Generating a host replays every Docker call from the daemon's start (0.4 s for 26,000 rules);
adding one container to it costs a dozen calls. After each apply, :mod:`nftdocker.apply` stores beside
the table's view (its rules as keys, with handles) a *checkpoint*: what Docker's replay keeps
besides the rules (IPAM pools, the port allocator, endpoints, sysctls, hairpin ports) and a
fingerprint of the scenario it was generated from. When the next scenario is the same host with
containers appended at the end (daemon, host and networks unchanged, the earlier containers
unchanged and in the same order), :class:`ResumedFirewall` restores that state and runs just the
new containers. Its iptables checks Docker's ``-C`` against the view's keys: after our own commit
the view holds exactly the generated rules (the stored view is only trusted while nothing else has
committed), so the calls and their effects are those a full generation makes, in the same order.

Anything else (a changed network, a removed container, a new chain, a policy change) raises
:class:`Unsupported` and the caller generates the whole host.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from functools import lru_cache
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from nftdocker.nft import ir
from nftdocker import model
from nftdocker.nft import render
from nftdocker.docker.generate import Firewall
from nftdocker.docker.ipam import Pool
from nftdocker.docker.iptables import Iptables
from nftdocker.docker.state import Sysctl
from nftdocker.nft.ir import Call, Chain, Family, Rule
from nftdocker.model import Endpoint, Scenario
from nftdocker.nft.render import rule_text

FORMAT = 1


class Unsupported(Exception):
    """The change cannot be replayed on the checkpoint: generate the whole host."""


class Damaged(Unsupported):
    """The checkpoint is not one this code wrote (damaged or forged)."""


def _digest(obj: Any) -> str:
    # The model is frozen dataclasses of tuples, strings, numbers and ipaddress values: repr() is
    # deterministic across processes (no sets, no dicts).
    return hashlib.sha256(repr(obj).encode()).hexdigest()


@lru_cache(maxsize=1)
def code_digest() -> str:
    """The generation code itself (every module of this package, the model, the rule IR and its
    renderer): a checkpoint written by other code (an upgrade) is not resumed."""
    package = Path(__file__).parent
    files = [(f"docker/{p.relative_to(package)}", p) for p in sorted(package.rglob("*.py"))]
    files += [(Path(m.__file__).name, Path(m.__file__)) for m in (model, ir, render)]  # type: ignore[arg-type]
    h = hashlib.sha256()
    for name, path in files:
        h.update(name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def fingerprint(sc: Scenario, n: int | None = None) -> dict[str, Any]:
    """What identifies the generated host: the code, daemon, host and networks, and the first ``n`` containers."""
    ctrs = sc.containers if n is None else sc.containers[:n]
    return {"format": FORMAT, "code": code_digest(), "base": _digest((sc.daemon, sc.host, sc.networks, sc.events)), "n": len(ctrs),
            "containers": _digest(ctrs)}


def appended(cp: Mapping[str, Any], sc: Scenario) -> int | None:
    """How many containers ``sc`` appends to the checkpoint's scenario; None if it is not that."""
    if sc.events:  # the listed containers start before the history: nothing is appended at its end
        return None
    fp = cp.get("fingerprint") or {}
    n = fp.get("n")
    if fp.get("format") != FORMAT or not isinstance(n, int) or n > len(sc.containers):
        return None
    if fingerprint(sc, n) != fp:
        return None
    return len(sc.containers) - n


def checkpoint(fw: Firewall) -> dict[str, Any]:
    """The state Docker's replay keeps besides the rules, after ``fw`` ran (JSON-able)."""
    return {
        "fingerprint": fingerprint(fw.sc),
        "forwarding": [fw.forwarding[4], fw.forwarding[6]],
        "ipam": [[net, v, str(p.subnet), sorted(p.used), p.range and str(p.range)] for (net, v), p in fw.ipam.items()],
        "ports": {
            "taken": [[str(h), proto, sorted(ports)] for (h, proto), ports in fw.ports.taken.items()],
            "last": [[str(h), proto, lo, hi, port] for (h, proto, lo, hi), port in fw.ports.last.items()],
            "sockets": [[proto, port, str(h), listening]
                        for (proto, port), socks in fw.ports.sockets.items() for h, listening in socks],
        },
        "endpoints": [[e.container, e.network, e.ipv4 and str(e.ipv4), e.ipv6 and str(e.ipv6)] for e in fw.endpoints],
        "sysctls": [[s.key, s.value, s.origin] for s in fw.sysctls.values()],
        "hairpin_ports": list(fw.hairpin_ports),
    }


class ResumeIptables(Iptables):
    """:class:`nftdocker.docker.iptables.Iptables` over a loaded table's keys, recording Docker's calls.

    ``chains`` maps nft chain names (``filter-DOCKER``) to their rules' keys. Every call appends
    ``(op, table, chain, key, origin)`` to ``log`` (op: add, insert, delete; :data:`nftdocker.nft.ir.Call`)
    when Docker's ``-C`` says it changes the chain. Creating a chain or changing a policy raises :class:`Unsupported`.
    """

    def __init__(self, family: Family, chains: Mapping[str, Sequence[str]] | None) -> None:
        super().__init__(family)
        self.keys = chains or {}
        self.log: list[Call] = []
        self.counts: dict[tuple[str, str], Counter[str]] = {}

    def _count(self, table: str, name: str) -> Counter[str]:
        cnt = self.counts.get((table, name))
        if cnt is None:
            keys = self.keys.get(f"{table}-{name}")
            if keys is None:
                raise Unsupported(f"{self.rs.family} {table}-{name}: a chain the loaded table does not have")
            cnt = self.counts[(table, name)] = Counter(keys)
        return cnt

    def _key(self, table: str, r: Rule) -> str:
        return rule_text(r, self.rs, table)  # the ruleset stays empty: it only gives the family

    def chain(self, table: str, name: str) -> Chain:
        self._count(table, name)
        return Chain(table, name)

    def append(self, table: str, chain: str, r: Rule) -> None:
        self._put("add", table, chain, r)

    def insert(self, table: str, chain: str, r: Rule) -> None:
        self._put("insert", table, chain, r)

    def _put(self, op: str, table: str, chain: str, r: Rule) -> None:
        cnt = self._count(table, chain)
        key = self._key(table, r)
        if key not in cnt:
            cnt[key] = 1
            self.log.append((op, table, chain, key, r.origin))

    def delete(self, table: str, chain: str, r: Rule) -> None:
        cnt = self._count(table, chain)
        key = self._key(table, r)
        if key in cnt:
            cnt[key] -= 1
            if not cnt[key]:
                del cnt[key]
            self.log.append(("delete", table, chain, key, r.origin))

    def set_policy(self, table: str, chain: str, policy: Literal["ACCEPT", "DROP"]) -> None:
        raise Unsupported(f"{self.rs.family} {table}-{chain}: a policy change")


class ResumedFirewall(Firewall):
    """:class:`~nftdocker.docker.generate.Firewall` restored from a checkpoint, over the loaded table's keys.

    ``tables`` maps family (ip, ip6) to its chains' keys (None: no table loaded for it).
    :meth:`add_containers` then replays the appended containers; :meth:`logs` holds their calls.
    """

    def __init__(self, scenario: Scenario, cp: Mapping[str, Any],
                 tables: Mapping[str, Mapping[str, Sequence[str]] | None]) -> None:
        super().__init__(scenario)
        self.ipt = {4: ResumeIptables("ip", tables.get("ip")), 6: ResumeIptables("ip6", tables.get("ip6"))}
        try:
            self._restore(cp)
        except (KeyError, TypeError, ValueError) as e:
            raise Damaged(f"unreadable checkpoint: {e!r}") from None

    def _restore(self, cp: Mapping[str, Any]) -> None:
        f4, f6 = cp["forwarding"]
        self.forwarding = {4: bool(f4), 6: bool(f6)}
        for net, v, subnet, used, rng in cp["ipam"]:
            pool = Pool(ip_network(subnet), None, rng and ip_network(rng))
            pool.used = set(used)
            self.ipam[(net, int(v))] = pool
        for h, proto, ports in cp["ports"]["taken"]:
            self.ports.taken[(ip_address(h), proto)] = set(ports)
        for h, proto, lo, hi, port in cp["ports"]["last"]:
            self.ports.last[(ip_address(h), proto, lo, hi)] = port
        for proto, port, h, listening in cp["ports"]["sockets"]:
            self.ports.sockets.setdefault((proto, port), []).append([ip_address(h), bool(listening)])
        for ctr, net, a4, a6 in cp["endpoints"]:
            ep = Endpoint(ctr, net, a4 and ip_address(a4), a6 and ip_address(a6))  # type: ignore[arg-type]
            self.endpoints.append(ep)
            self.eps[(ctr, net)] = ep
        self.sysctls = {(k, v): Sysctl(k, v, o) for k, v, o in cp["sysctls"]}
        self.hairpin_ports = list(cp["hairpin_ports"])

    def logs(self) -> dict[str, list[Call]]:
        return {"ip": self.ipt[4].log, "ip6": self.ipt[6].log}  # type: ignore[attr-defined]
