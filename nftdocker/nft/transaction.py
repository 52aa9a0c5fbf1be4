"""One nftables transaction as typed operations, rendered to nft text on demand.

An :class:`Op` is one command: a verb (add, insert, delete, flush), the object (table, chain,
rule), where it goes, its text (a rule's statement, a chain's header, a table's comment) and,
for a rule, its origin (the moby function that made it: ``ports.set_per_port_nat[...]``) and the
key a view knows it by. A :class:`Transaction` renders its operations one command a line
(:meth:`Transaction.flat_text`) or, with ``block``, every table it creates anew in nft's block
form (``table ... { chain ... { ... } }``: libnftables parses it faster, and adds the same
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
class Transaction:
    """Typed operations sent in one libnftables call (all or nothing)."""

    ops: list[Op] = field(default_factory=list)
    #: render tables created anew in nft's block form
    block: bool = False

    def add(self, op: Op) -> None:
        self.ops.append(op)

    def extend(self, ops: Iterable[Op] | Transaction) -> None:
        self.ops.extend(ops.ops if isinstance(ops, Transaction) else ops)

    def commands(self) -> int:
        return len(self.ops)

    def __bool__(self) -> bool:
        return bool(self.ops)

    def flat_lines(self) -> list[str]:
        return [op.line() for op in self.ops]

    def flat_text(self) -> str:
        return "\n".join(self.flat_lines()) + "\n"

    @property
    def text(self) -> str:
        """What is sent: block form for new tables with ``block``, else one command a line."""
        return self.block_text() if self.block else self.flat_text()

    def block_text(self) -> str:
        out: list[str] = []
        ops, i = self.ops, 0
        while i < len(ops):
            op = ops[i]
            i += 1
            if not (op.verb == "add" and op.obj == "table" and op.body):
                out.append(op.line())
                continue
            j = i
            made: set[str] = set()  # the new table's chains, as the ops that follow add them
            while j < len(ops) and ops[j].verb == "add" and ops[j].family == op.family and ops[j].table == op.table and (
                    ops[j].obj == "chain" and ops[j].chain not in made or ops[j].obj == "rule" and ops[j].chain in made):
                if ops[j].obj == "chain":
                    made.add(ops[j].chain)
                j += 1
            out.extend(table_block(op.family, op.table, op.body, ops[i:j]))
            i = j
        return "\n".join(out) + "\n"


def table_block(family: str, table: str, declaration: str, ops: Iterable[Op], spaced: bool = False,
                comments: bool = False) -> list[str]:
    """A table in nft's block form, its chains in the order ``ops`` adds them, each with its rules
    (``add chain`` / ``add rule`` operations). ``declaration``: the table's own line (its comment);
    ``spaced``: a blank line between chains; ``comments``: each rule with its origin as a comment."""
    chains: dict[str, tuple[str, list[str]]] = {}
    for op in ops:
        if op.obj == "chain":
            chains[op.chain] = (op.body, [])
        else:
            chains[op.chain][1].append(op.body + (f' comment "{_comment(op.origin)}"' if comments and op.origin else ""))
    out = [f"table {family} {table} {{"] + ([f"\t{declaration}"] if declaration else [])
    for n, (name, (header, rules)) in enumerate(chains.items()):
        out.append(f"\tchain {name} {{")
        if header:
            out.append(f"\t\t{header}")
        out.extend([f"\t\t{r}" for r in rules])
        out.append("\t}")
        if spaced and n < len(chains) - 1:
            out.append("")
    out.append("}")
    return out


def _comment(text: str) -> str:
    return text.replace('"', "'")[:128]


def locate(tx: Transaction, accepted: Callable[[str], bool]) -> int | None:
    """The 1-based index of the first operation of ``tx`` refused, by bisecting prefixes of its
    flat form: ``accepted(text)`` is a dry run. (The kernel validates a batch as a whole, and
    libnftables then blames its first command.)"""
    lines = tx.flat_lines()
    lo, hi = 0, len(lines)  # prefix of length lo passes; prefix of length hi fails
    if hi == 0:
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
        return message
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
