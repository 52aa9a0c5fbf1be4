"""One nftables transaction as typed operations, rendered to nft text on demand.

An :class:`Op` is one command: a verb (add, insert, delete, flush), the object (table, chain,
rule), where it goes, its text (a rule's statement, a chain's header, a table's comment) and,
for a rule, its origin (the moby function that made it: ``ports.set_per_port_nat[...]``) and the
key a view knows it by. A table created anew whole is one :class:`Block` (its chains, their
rules' statements and origins), which stands for the same operations. A :class:`Transaction`
renders one command a line (:meth:`Transaction.flat_text`) or, with ``block``, each Block in nft's
block form (``table ... { chain ... { ... } }``: libnftables parses it faster, and adds the same
objects in the same order). Whichever form was sent, a refused transaction is located on its
flat form (:func:`locate`: bisecting dry-run prefixes), so the error names the offending rule's
origin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, NamedTuple

from nftdocker.nft.view import KTable


class Op(NamedTuple):
    verb: str  # add | insert | delete | flush
    obj: str  # table | chain | rule
    family: str
    table: str
    chain: str = ""
    #: a rule's statement; a chain's header; a table's comment declaration
    body: str = ""
    #: the rule a ``delete rule`` removes
    handle: int | None = None
    origin: str = ""
    #: the view's key of a rule, when it is not its body (the ``--user-rules`` file's rules)
    key: str | None = None

    def line(self) -> str:
        """The command, one line."""
        where = f"{self.verb} {self.obj} {self.family} {self.table}"
        if self.obj == "table":
            return where + (f" {{ {self.body} }}" if self.body else "")
        if self.obj == "chain":
            return f"{where} {self.chain}" + (f" {{ {self.body} }}" if self.body else "")
        if self.handle is not None:
            return f"{where} {self.chain} handle {self.handle}"
        return f"{where} {self.chain} {self.body}"

    @property
    def rule_key(self) -> str:
        return self.key if self.key is not None else self.body


def rule(verb: str, family: str, table: str, chain: str, body: str, origin: str = "", key: str | None = None) -> Op:
    """An ``add``/``insert rule`` operation."""
    return Op(verb, "rule", family, table, chain, body, None, origin, key)


def delete_rule(family: str, table: str, chain: str, handle: int) -> Op:
    return Op("delete", "rule", family, table, chain, "", handle)


@dataclass
class ChainBlock:
    """One chain of a :class:`Block`: its header, and its rules' statements with their origins."""

    name: str
    header: str
    bodies: list[str]
    origins: list[str]
    #: the view's keys of the rules, where they are not their bodies (``--user-rules``), else None
    keys: list[str | None] | None = None


@dataclass
class Block:
    """A table created anew, whole: ``add table`` (with its declaration: the mark), ``add chain``
    for each chain, then ``add rule`` for each rule, chain by chain. Kept together, so that it
    renders in nft's block form without a pass over thousands of operations; :meth:`ops` gives
    the same operations one by one."""

    family: str
    table: str
    declaration: str
    chains: list[ChainBlock] = field(default_factory=list)

    def ops(self) -> list[Op]:
        fam, table = self.family, self.table
        out = [Op("add", "table", fam, table, body=self.declaration)] if self.declaration else []
        out += [Op("add", "chain", fam, table, c.name, c.header, origin=f"chain {c.name}") for c in self.chains]
        for c in self.chains:
            keys = c.keys or [None] * len(c.bodies)
            out += [Op("add", "rule", fam, table, c.name, b, None, o, k) for b, o, k in zip(c.bodies, c.origins, keys)]
        return out

    def commands(self) -> int:
        return (1 if self.declaration else 0) + len(self.chains) + sum(len(c.bodies) for c in self.chains)

    def lines(self, spaced: bool = False, comments: bool = False) -> list[str]:
        """nft's block form; ``spaced``: a blank line between chains; ``comments``: each rule with its origin."""
        out = [f"table {self.family} {self.table} {{"] + ([f"\t{self.declaration}"] if self.declaration else [])
        last = len(self.chains) - 1
        for n, c in enumerate(self.chains):
            out.append(f"\tchain {c.name} {{")
            if c.header:
                out.append(f"\t\t{c.header}")
            if comments:
                out.extend([f'\t\t{b} comment "{_comment(o)}"' if o else f"\t\t{b}" for b, o in zip(c.bodies, c.origins)])
            else:
                out.extend(["\t\t" + b for b in c.bodies])
            out.append("\t}")
            if spaced and n < last:
                out.append("")
        out.append("}")
        return out


def _comment(text: str) -> str:
    return text.replace('"', "'")[:128]


@dataclass
class Transaction:
    """Typed operations (and whole new tables) sent in one libnftables call (all or nothing)."""

    items: list[Op | Block] = field(default_factory=list)
    #: render new tables (:class:`Block`) in nft's block form (else one command a line)
    block: bool = False

    def add(self, item: Op | Block) -> None:
        self.items.append(item)

    def extend(self, items: Iterable[Op | Block] | Transaction) -> None:
        self.items.extend(items.items if isinstance(items, Transaction) else items)

    @property
    def ops(self) -> list[Op]:
        """Every operation, in order, one by one."""
        out: list[Op] = []
        for it in self.items:
            if isinstance(it, Block):
                out.extend(it.ops())
            else:
                out.append(it)
        return out

    def commands(self) -> int:
        return sum(it.commands() if isinstance(it, Block) else 1 for it in self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def flat_lines(self) -> list[str]:
        return [op.line() for op in self.ops]

    def flat_text(self) -> str:
        return "\n".join(self.flat_lines()) + "\n"

    @property
    def text(self) -> str:
        """What is sent: new tables in block form with ``block``, else one command a line."""
        if not self.block:
            return self.flat_text()
        out: list[str] = []
        for it in self.items:
            if isinstance(it, Block):
                out.extend(it.lines())
            else:
                out.append(it.line())
        return "\n".join(out) + "\n"


def locate(tx: Transaction, accepted: Callable[[str], bool]) -> int | None:
    """The 1-based index of the first operation of ``tx`` refused, by bisecting prefixes of its
    flat form: ``accepted(text)`` is a dry run. (The kernel validates a batch as a whole, and
    libnftables then blames its first command.) None when the whole flat form is accepted: the
    refusal does not reproduce in a dry run, and no operation is to blame."""
    lines = tx.flat_lines()
    lo, hi = 0, len(lines)  # prefix of length lo passes; prefix of length hi fails
    if hi == 0 or accepted("\n".join(lines) + "\n"):
        return None
    for _ in range(64):
        if hi - lo <= 1:
            return hi
        mid = (lo + hi) // 2
        if accepted("\n".join(lines[:mid]) + "\n"):
            lo = mid
        else:
            hi = mid
    return None


def offending(tx: Transaction, message: str, accepted: Callable[[str], bool]) -> str:
    """The kernel's message and the operation (with its rule's origin) that caused it."""
    n = locate(tx, accepted)
    if n is None:
        return message + ("; not reproducible in a dry run" if tx else "")
    op = tx.ops[n - 1]
    origin = op.origin or (op.chain if op.obj == "rule" and op.verb != "delete" else "")
    return f"{message}; offending command {n}: {op.line()}" + (f" (origin: {origin})" if origin else "")


@dataclass
class Edit(Transaction):
    """A transaction planned against the kernel's view, and what the kernel will hold after it."""

    #: the view afterwards, per family (None: no table, or not known in advance)
    after: dict[str, KTable | None] = field(default_factory=dict)
    #: per add/insert operation, in order: (family, chain, index in the chain afterwards)
    slots: list[tuple[str, str, int]] = field(default_factory=list)
    added: int = 0
    removed: int = 0
    mode: str = "incremental"  # incremental | full | noop
    #: time spent in libnftables and the kernel (the ``cmd`` call), once committed
    kernel_seconds: float = 0.0
    #: the families whose table the transaction deletes
    dropped: list[str] = field(default_factory=list)
    #: families whose table a full replace edits in place (the user's objects are kept there)
    in_place: list[str] = field(default_factory=list)
    #: per family replaced in place, the user's rules kept in filter-DOCKER-USER
    kept: dict[str, int] = field(default_factory=dict)
