"""Read iptables rules out of any text that shows them, and diff them.

Accepted: iptables-save / ip6tables-save output, ``iptables -S`` output (one table or several,
``-t TABLE`` prefixes allowed), and Docker's iptablesdoc markdown pages (``-P``/``-N``/``-A``
dumps under headings that name the table). Everything else in the text is ignored.
"""

from __future__ import annotations

import difflib
import re
import shlex
from dataclasses import dataclass, field

from nftdocker.errors import ReferenceError_
from nftdocker.nft.ir import BUILTIN_CHAINS, TABLE_ORDER


@dataclass
class Table:
    """One iptables table as text: policies of built-ins, user chains, rules in order."""

    name: str
    policies: dict[str, str] = field(default_factory=dict)
    chains: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)

    def canonical(self) -> list[str]:
        out = [f"*{self.name}"]
        for b in BUILTIN_CHAINS[self.name]:
            out.append(f":{b} {self.policies.get(b, 'ACCEPT')} [0:0]")
        for c in sorted(set(self.chains)):
            out.append(f":{c} - [0:0]")
        order = {c: i for i, c in enumerate(list(BUILTIN_CHAINS[self.name]) + sorted(set(self.chains)))}
        rules = sorted(enumerate(self.rules), key=lambda t: (order.get(t[1].split()[1], 10**6), t[0]))
        out.extend(r for _, r in rules)
        out.append("COMMIT")
        return out


def _guess_table(builtins: set[str]) -> str | None:
    if "FORWARD" in builtins and "POSTROUTING" in builtins:
        return "mangle"
    if "POSTROUTING" in builtins or ("INPUT" in builtins and "PREROUTING" in builtins):
        return "nat"
    if "FORWARD" in builtins or ("INPUT" in builtins and "PREROUTING" not in builtins):
        return "filter"
    if "PREROUTING" in builtins and "OUTPUT" in builtins:
        return "raw"
    return None


# Printable ASCII without quotes or backslashes: shlex would split it exactly as str.split does.
_PLAIN = re.compile(r"[ !#-&(-\[\]-~]*")
_HEADING = re.compile(r"\b(raw|mangle|filter|nat)\b\s+table|\btable\s+(raw|mangle|filter|nat)\b", re.I)


def parse(text: str, source: str = "<reference>") -> dict[str, Table]:
    """All tables the text shows, by name. Raises ReferenceError_ when there are none.

    A table starts at ``*TABLE`` (save format) or at a run of ``-P`` lines (``-S`` format,
    the table told by a nearby heading or by its built-in chains); ``-t TABLE`` on a line
    names the table for that line. An ``-S`` table ends with its block (the first line that is
    not a rule, blank ones included), so rule-like lines outside any table (quoted snippets in
    prose, such as an ``iptables -S DOCKER`` listing that starts at ``-N``) are ignored.
    """
    tables: dict[str, Table] = {}
    current: Table | None = None
    hint: str | None = None
    pending: list[tuple[str, str]] = []
    in_save = False

    def start(name: str, lineno: int) -> Table:
        if name not in BUILTIN_CHAINS:
            raise ReferenceError_(f"{source}:{lineno}: unknown table {name!r}")
        return tables.setdefault(name, Table(name))

    def flush(lineno: int) -> None:
        nonlocal current, pending
        name = hint or _guess_table({c for c, _ in pending})
        if name is None:
            raise ReferenceError_(f"{source}:{lineno}: cannot tell which table the -P lines belong to")
        current = start(name, lineno)
        for c, p in pending:
            current.policies[c] = p
        pending = []

    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        for prefix in ("$ ", "# ", "sudo ", "iptables ", "ip6tables ", "--wait "):
            if line.startswith(prefix) and (prefix not in ("# ",) or line[2:3] in "-*:"):
                line = line[len(prefix):].strip()
        explicit = None
        m = re.match(r"^-t\s+(\w+)\s+(.*)$", line)
        if m:
            explicit, line = m.group(1), m.group(2)
        if line.startswith("*") and re.fullmatch(r"\*\w+", line):
            current = start(line[1:], lineno)
            in_save = True
            continue
        if line == "COMMIT":
            current, in_save = None, False
            continue
        if in_save and line.startswith(":") and current is not None:
            parts = line[1:].split()
            if len(parts) >= 2:
                if parts[1] == "-":
                    current.chains.append(parts[0])
                else:
                    current.policies[parts[0]] = parts[1]
            continue
        if not line.startswith("-"):
            if not in_save and not pending:
                current = None  # the -S block is over
            hm = _HEADING.search(line)
            if hm and not line.startswith("Chain "):
                hint = (hm.group(1) or hm.group(2)).lower()
            continue
        try:
            words = line.split() if _PLAIN.fullmatch(line) else shlex.split(line)
        except ValueError:
            continue
        if len(words) < 2 or words[0] not in ("-P", "-N", "-A"):
            continue
        if explicit:
            target = start(explicit, lineno)
        else:
            if words[0] == "-P" and not in_save:
                if not pending:
                    current = None
                pending.append((words[1], words[2] if len(words) > 2 else "ACCEPT"))
                continue
            if pending:
                flush(lineno)
                hint = None
            if current is None:
                continue
            target = current
        if words[0] == "-P":
            target.policies[words[1]] = words[2] if len(words) > 2 else "ACCEPT"
        elif words[0] == "-N":
            target.chains.append(words[1])
        else:
            target.rules.append(" ".join(words))
    if pending:
        flush(len(text.splitlines()))
    if not tables:
        raise ReferenceError_(f"{source}: no iptables rules found (expected iptables-save, iptables -S or an iptablesdoc page)")
    return tables



def canonical(tables: dict[str, Table], only: list[str] | None = None) -> list[str]:
    out: list[str] = []
    for name in TABLE_ORDER:
        if name in tables and (only is None or name in only):
            out.extend(tables[name].canonical())
    return out


def diff(ours_text: str, reference_text: str, reference_name: str, ours_name: str = "nftdocker") -> tuple[list[str], list[str]]:
    """Unified diff of our tables against the reference, restricted to the tables the reference shows."""
    ref = parse(reference_text, reference_name)
    ours = parse(ours_text, ours_name) if ours_text.strip() else {}
    names = [n for n in TABLE_ORDER if n in ref]
    a = canonical(ref, names)
    b = canonical(ours, names)
    lines = list(difflib.unified_diff(a, b, fromfile=reference_name, tofile=ours_name, lineterm=""))
    return lines, names
