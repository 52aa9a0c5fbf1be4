"""nftdocker's tables: their names, the mark that makes one ours, and which chains in it are ours.

Only tables named ``--table`` (default ``nftdocker``) in families ``ip``/``ip6`` are ever
touched, and only when they carry :data:`TABLE_MARK`. Every chain there is nftdocker's when it
is an iptables built-in or ``DOCKER*`` chain (``<iptables table>-<chain>``); any other chain is
the user's and is kept. The ``--user-rules`` file's rules in ``filter-DOCKER-USER`` are told by
their comment (:data:`USER_RULES_TAG`); a view keys them :data:`USER_RULES_KEY` + that comment.
"""

from __future__ import annotations

import re
from typing import Protocol, Sequence

from nftdocker.errors import UsageError
from nftdocker.nft.ir import BUILTIN_CHAINS

RESERVED_TABLES = {"filter", "nat", "raw", "mangle", "security", "docker-bridges", "firewalld", "broute"}
USER_CHAIN = "filter-DOCKER-USER"
#: the comment nftdocker gives every table it creates; a table of that name without it is not ours
TABLE_MARK = "managed by nftdocker"
TABLE_COMMENT = f'comment "{TABLE_MARK}";'
NFT_FAMILIES = {"ip", "ip6", "inet", "arp", "bridge", "netdev"}
#: the start of the comment nftdocker puts on each of the ``--user-rules`` file's rules
USER_RULES_TAG = "nftdocker user-rules "
#: the view's key of a tagged rule (see :func:`key_of_comment`); no generated rule has it
USER_RULES_KEY = "\0user-rules "
_NAME_OK = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")


def check_table_name(table: str) -> str:
    if not _NAME_OK.match(table):
        raise UsageError(f"--table {table!r}: use letters, digits, '_', '.', '-' (at most 64)")
    if table in NFT_FAMILIES:
        raise UsageError(f"--table {table!r} is an nft family name, not a table name")
    if table in RESERVED_TABLES:
        raise UsageError(f"--table {table!r} belongs to iptables-nft, Docker or firewalld; nftdocker only touches its own tables")
    return table


def is_own_chain(name: str) -> bool:
    """Is ``name`` one of nftdocker's chains (an iptables built-in or ``DOCKER*`` chain, as
    ``<table>-<chain>``)? Every other chain in its tables is the user's and is kept."""
    ipt_table, _, rest = name.partition("-")
    return ipt_table in BUILTIN_CHAINS and (rest in BUILTIN_CHAINS[ipt_table] or rest == "DOCKER" or rest.startswith("DOCKER-"))


def key_of_comment(comment: str) -> str | None:
    """The view's key of a kernel rule carrying ``comment``, if it is one of the file's rules."""
    return USER_RULES_KEY + comment if comment.startswith(USER_RULES_TAG) else None


def is_user_rules_key(key: str) -> bool:
    return key.startswith(USER_RULES_KEY)


class FileRule(Protocol):
    """One of the ``--user-rules`` file's rules (:class:`nftdocker.host.user_rules.UserRule`)."""

    @property
    def key(self) -> str: ...
    @property
    def command_text(self) -> str: ...
    @property
    def where(self) -> str: ...


class RuleFile(Protocol):
    """The ``--user-rules`` file (:class:`nftdocker.host.user_rules.UserRules`)."""

    def of(self, family: str) -> Sequence[FileRule]: ...


def rules_of(ur: RuleFile | None, family: str) -> list[FileRule]:
    return list(ur.of(family)) if ur is not None else []
