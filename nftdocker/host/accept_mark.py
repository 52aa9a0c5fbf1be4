"""``--accept-mark VALUE[/MASK]``: mark the container traffic nftdocker accepts, for a drop-policy host firewall.

An nftables ``accept`` ends a packet's walk through one base chain only: a host firewall's own
``type filter hook forward`` chain with ``policy drop`` (Debian's ``/etc/nftables.conf``) still sees,
and drops, every packet nftdocker's ``filter-FORWARD`` accepted. With an accept mark, each ``accept``
of nftdocker's filter table (Docker's rules that let container traffic through: DOCKER-CT's
``ct state`` accepts, DOCKER-FORWARD's ``-i BR`` accepts, DOCKER's per-port, ICMP and unprotected
accepts, icc and link accepts, the routed-mode isolation accepts) first sets the packet mark:
``meta mark set mark and ~MASK or VALUE``; the host firewall lets all of it through with one rule,
``meta mark & MASK == VALUE accept``. Drops, returns and the chains' policies are left as they are,
and so is ``filter-DOCKER-USER`` (the user's rules): what Docker does not accept is not marked.

Only the bits of MASK change, so marks others set (VPNs, policy routing) keep their other bits.
The mark lives on the packet, not the connection: each packet is marked as it is accepted.

Order matters: a chain that reads the mark must run after the one that sets it. Two base chains at
the same hook and priority run in the reverse order of their creation, so nftdocker's filter base
chains move to priority ``filter - 1`` (-1), before a host chain at ``priority filter`` (0) however
the two were loaded; nothing else runs between -1 and 0.

The iptables form (``compat``) is unchanged, Docker's own: the mark exists only in nft
(``compat/known-differences.toml``, ``accept-mark``).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from nftdocker.docker.iptables import DOCKER_USER
from nftdocker.errors import UsageError
from nftdocker.nft.ir import Chain, Rule, Ruleset, Verdict
from nftdocker.nft.render import MARK_BITS

#: the iptables table whose accepts are marked (its DOCKER_USER chain, the user's, is left alone)
TABLE = "filter"
#: nftdocker's filter base chains with an accept mark: before a host chain at ``priority filter``
PRIORITY = -1

_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|[0-9]+")


def parse(text: str, option: str = "--accept-mark") -> tuple[int, int]:
    """``VALUE[/MASK]`` (decimal or 0x hex, 32 bits; MASK defaults to 0xffffffff) -> (VALUE, MASK).

    Refused (UsageError, exit 2): not a number, more than 32 bits, a zero MASK, a VALUE with bits
    outside MASK, and a zero VALUE (every unmarked packet carries it)."""
    value_text, sep, mask_text = text.partition("/")

    def number(part: str, what: str) -> int:
        if not _NUMBER.fullmatch(part):
            raise UsageError(f"{option} {text!r}: {what} {part!r} is not a number (decimal or 0x hex)")
        n = int(part, 0) if part[:2].lower() == "0x" else int(part, 10)
        if n > MARK_BITS:
            raise UsageError(f"{option} {text!r}: {what} {part!r} is more than 32 bits")
        return n

    value = number(value_text, "VALUE")
    mask = number(mask_text, "MASK") if sep else MARK_BITS
    if mask == 0:
        raise UsageError(f"{option} {text!r}: MASK is 0, so no bit would be set")
    if value & ~mask:
        raise UsageError(f"{option} {text!r}: VALUE 0x{value:x} has bits outside MASK 0x{mask:x}")
    if value == 0:
        raise UsageError(f"{option} {text!r}: VALUE is 0, which every unmarked packet carries; choose a non-zero VALUE")
    return value, mask


def host_rule(mark: tuple[int, int]) -> str:
    """The one rule the host firewall's forward chain needs."""
    value, mask = mark
    if mask == MARK_BITS:
        return f"meta mark 0x{value:08x} accept"
    return f"meta mark & 0x{mask:08x} == 0x{value:08x} accept"


def _marked(rs: Ruleset, mark: tuple[int, int]) -> Ruleset:
    out = Ruleset(rs.family)
    for key, c in rs.chains.items():
        if c.table != TABLE:
            out.chains[key] = c
            continue
        rules = c.rules
        if c.name != DOCKER_USER:
            rules = [Rule(r.matches, r.action._replace(mark=mark), r.origin)
                     if isinstance(r.action, Verdict) and r.action.kind == "ACCEPT" else r for r in c.rules]
        out.chains[key] = Chain(c.table, c.name, rules, c.policy, PRIORITY if c.builtin else c.prio)
    return out


def apply(gen: Any, mark: tuple[int, int] | None) -> Any:
    """``gen`` (a nftdocker.docker.generate.Generated) with its filter accepts marked; ``gen`` itself when ``mark`` is None.

    A copy: the Generated and its rulesets are left as they were (generation state, checkpoints)."""
    if mark is None:
        return gen
    return dataclasses.replace(gen, rulesets={fam: _marked(rs, mark) for fam, rs in gen.rulesets.items()})
