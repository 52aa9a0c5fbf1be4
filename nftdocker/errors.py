"""Exceptions raised by nftdocker.

Each class's docstring is its default message. The CLI is the only place that
prints them or chooses an exit status: ``ScenarioError`` and ``UsageError`` exit 2,
``KernelError``/``ApplyError``/``DockerError``/``EnvironmentProblem`` exit 3.
"""

from __future__ import annotations


class NftdockerError(Exception):
    """nftdocker failed."""

    exit_status = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class UsageError(NftdockerError):
    """Bad command-line usage."""

    exit_status = 2


class ScenarioError(NftdockerError):
    """The scenario is not valid."""

    exit_status = 2

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{source}: {key}: " if key else f"{source}: "
        super().__init__(where + problem)


class ReferenceError_(NftdockerError):
    """The reference text holds no iptables rules nftdocker can read."""

    exit_status = 2


class GenerationError(NftdockerError):
    """The scenario describes something Docker 28.0.1 would refuse."""

    exit_status = 2


class CompatError(NftdockerError):
    """The nft table cannot be translated to iptables form."""

    exit_status = 2


class KernelError(NftdockerError):
    """The kernel refused the change."""

    exit_status = 3


class ApplyError(KernelError):
    """The transaction could not be applied."""


class EnvironmentProblem(NftdockerError):
    """This host cannot do that (missing privilege, module or library)."""

    exit_status = 3


class DockerError(NftdockerError):
    """The Docker Engine could not be reached."""

    exit_status = 3
