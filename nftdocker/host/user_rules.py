"""``--user-rules FILE``: the user's own nft rule statements for ``filter-DOCKER-USER``.

The file holds one rule statement a line, as after ``nft add rule FAMILY TABLE filter-DOCKER-USER``;
blank lines and lines starting with ``#`` are ignored. A line goes into both families' chains
(``ip`` and ``ip6``), unless it starts with ``ip:`` or ``ip6:`` (then only that family's)::

    # published port 8080 only from 192.0.2.0/24
    ip: ip saddr != 192.0.2.0/24 meta l4proto tcp ct original proto-dst 8080 drop
    iifname "eth9" drop

The text is nft syntax by design, but it must not leave the chain: a line holding ``;``, ``{``,
``}``, ``#`` (after its start), a backslash, a control character or unbalanced quotes is refused
before the kernel sees anything, as is ``comment`` (nftdocker's own comment marks the file's rules,
see below) and a placement (``position``, ``index``, ``handle``); every other line is checked by the kernel's dry run of ``add rule FAMILY TABLE
filter-DOCKER-USER LINE`` (:func:`check`), which names the line it refuses. Every refusal is one
:class:`ScenarioError` naming ``FILE:LINE`` (exit 2), before anything changes.

Each of the file's rules carries the comment ``nftdocker user-rules <hash>`` (of its family and
text): that is how the file's rules are told from rules added by hand (which are kept), and how a
re-apply with the same file finds them unchanged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from nftdocker.nft.backend import Backend, kernel_message
from nftdocker.nft.ir import FAMILIES
from nftdocker.nft.table import USER_RULES_KEY, USER_RULES_TAG
from nftdocker.errors import ScenarioError
from nftdocker.inputs import read_bytes

_REFUSED = {";": "';' (one rule a line: it would end the rule)", "{": "'{'", "}": "'}'",
            "#": "'#' after its start (put a comment on a line of its own)", "\\": "a backslash"}


@dataclass(frozen=True)
class UserRule:
    path: str
    lineno: int
    family: str
    text: str  # the statement as written (the family prefix and surrounding blanks removed)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.lineno}"

    @property
    def comment(self) -> str:
        digest = hashlib.sha256(f"{self.family} {self.text}".encode()).hexdigest()[:16]
        return USER_RULES_TAG + digest

    @property
    def key(self) -> str:
        """The view's key of this rule (as :func:`key_of_comment` gives it for the kernel's rule)."""
        return USER_RULES_KEY + self.comment

    @property
    def command_text(self) -> str:
        """The rule as sent: the statement, then its comment."""
        return f'{self.text} comment "{self.comment}"'


@dataclass(frozen=True)
class UserRules:
    path: str
    rules: tuple[UserRule, ...] = field(default_factory=tuple)

    def of(self, family: str) -> list[UserRule]:
        return [r for r in self.rules if r.family == family]


def _bad(path: str, n: int, problem: str) -> ScenarioError:
    return ScenarioError(f"{path}:{n}", "", problem)


def parse(path: str, data: bytes) -> UserRules:
    """The file's rules (syntax checks only; :func:`check` asks the kernel)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        n = data[:e.start].count(b"\n") + 1
        raise _bad(path, n, "is not UTF-8 text") from None
    out: list[UserRule] = []
    for n, raw in enumerate(text.split("\n"), 1):
        line = raw.strip(" \t")
        if not line or line.startswith("#"):
            continue
        for ch in line:
            if ch in _REFUSED:
                raise _bad(path, n, f"holds {_REFUSED[ch]}: each line is one rule statement for filter-DOCKER-USER")
            if ord(ch) < 0x20 and ch != "\t" or ord(ch) == 0x7F:
                raise _bad(path, n, f"holds the control character {ch!r}: each line is one rule statement")
        if line.count('"') % 2:
            raise _bad(path, n, "has unbalanced quotes (\")")
        words = line.split()
        fams = list(FAMILIES)
        stmt = line
        if words[0] in ("ip:", "ip6:"):
            fams = [words[0][:-1]]
            words = words[1:]
            stmt = line[line.index(":") + 1:].strip(" \t")
        elif words[0].endswith(":") and '"' not in words[0]:
            raise _bad(path, n, f"{words[0]!r}: a family prefix is 'ip:' or 'ip6:'")
        if not words:
            raise _bad(path, n, "has a family prefix but no rule")
        if words[0] in ("position", "index", "handle"):
            raise _bad(path, n, f"starts with {words[0]!r}: the file's rules go where the file puts them, "
                                "not at a position")
        if any(w.strip('"') == "comment" for w in words if not w.startswith('"')):
            raise _bad(path, n, "has a 'comment': nftdocker marks the file's rules with its own (use a # line)")
        out.extend(UserRule(path, n, f, stmt) for f in fams)
    return UserRules(path, tuple(out))


def load(path: str) -> UserRules:
    """Read ``path`` through the shared reader (regular file, 64 MiB at most) and :func:`parse` it."""
    return parse(path, read_bytes(path))


def _dry_run(be: Backend, family: str, table: str, rules: list[UserRule], bare: bool = False) -> tuple[int, str]:
    lines = [f"add table {family} {table}", f"add chain {family} {table} filter-DOCKER-USER"]
    lines += [f"add rule {family} {table} filter-DOCKER-USER {r.text if bare else r.command_text}" for r in rules]
    return be.dry_run("\n".join(lines) + "\n")


def _pointed(err: str, family: str, table: str, text: str) -> str:
    """`` (at 'WORD')``: the part of the line nft's carets mark (libnftables 1.0.6 may print another
    command line above them, but the carets' column is that of the refused ``add rule``)."""
    skip = len(f"add rule {family} {table} filter-DOCKER-USER ")
    for marks in err.splitlines():
        if marks.strip() and set(marks.strip()) == {"^"}:
            start, end = marks.index("^") - skip, len(marks.rstrip()) - skip
            if 0 <= start < len(text):
                return f" (at {text[start:end]!r})"
            return " (at the end of the line)" if start >= len(text) else ""
    return ""


def check(be: Backend, table: str, ur: UserRules | None, families: list[str]) -> None:
    """Have the kernel check (dry run, nothing changes) the file's rules of ``families``; the first
    line it refuses is one ScenarioError naming ``FILE:LINE`` and the kernel's message."""
    if ur is None:
        return
    for fam in families:
        rules = ur.of(fam)
        if not rules:
            continue
        rc, err = _dry_run(be, fam, table, rules)
        if rc == 0:
            continue
        for r in rules:  # bounded by the file's lines: name the first one refused on its own
            rc1, err1 = _dry_run(be, fam, table, [r], bare=True)  # the kernel's message about the line as written
            if rc1 == 0:
                rc1, err1 = _dry_run(be, fam, table, [r])
            if rc1 != 0:
                raise _bad(r.path, r.lineno, f"the kernel refuses this rule for {fam} filter-DOCKER-USER: "
                                             f"{kernel_message(err1)}{_pointed(err1, fam, table, r.text)}")
        raise _bad(ur.path, rules[-1].lineno, f"the kernel refuses the file's {fam} rules together: {kernel_message(err)}")
