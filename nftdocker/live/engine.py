"""Read a live Docker Engine: the ``docker inspect`` objects nftdocker loads, and its events.

Only this module talks to the Engine API, through the ``docker`` SDK's low-level APIClient,
imported when a function here is called so that the pure commands start without it. Every failure
to reach or read the daemon comes out as one ``DockerError`` whose message says what went wrong
and what to do.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from nftdocker import DOCKER_ENGINE_VERSION
from nftdocker.errors import DockerError

DEFAULT_HOST = "unix:///var/run/docker.sock"
#: Seconds to wait for any one answer of the daemon (the event stream itself never times out).
DEFAULT_TIMEOUT = 10.0

#: The events ``events`` yields: object type -> actions. Everything else changes no firewall rule.
EVENT_ACTIONS: dict[str, frozenset[str]] = {
    "container": frozenset({"start", "stop", "die", "destroy"}),
    "network": frozenset({"create", "destroy", "connect", "disconnect"}),
}


def fetch_inspect(docker_host: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> dict[str, list[dict[str, Any]]]:
    """``{"networks": [...], "containers": [...]}`` as ``docker inspect`` prints them.

    Each element is the daemon's own NetworkInspect / ContainerInspect object, unchanged: the same
    dump as ``docker network inspect $(docker network ls -q)`` and ``docker inspect $(docker ps -q)``.
    Networks come sorted by name (as ``docker network ls`` lists them), containers newest first
    (as ``docker ps``); only running containers are listed, since a stopped one has no endpoint
    and no published port. A network or container removed between the listing and its inspect is
    left out.

    ``docker_host`` is a daemon address (``unix:///path``, a bare socket path, ``tcp://host:port``);
    None means ``$DOCKER_HOST`` (with ``$DOCKER_TLS_VERIFY``/``$DOCKER_CERT_PATH``), else
    ``unix:///var/run/docker.sock``.
    """
    return _fetch(docker_host, timeout)[0]


def _fetch(docker_host: str | None, timeout: float) -> tuple[dict[str, list[dict[str, Any]]], str | None]:
    """``fetch_inspect``'s dump and the Engine's version (its /version ``Version``; None if it gave none)."""
    with _client(docker_host, timeout) as (client, url, docker_errors):
        with _translate(url, timeout, "asking its version"):
            answer = client.version(api_version=False)
        version = answer.get("Version") if isinstance(answer, dict) else None

        def inspect_all(kind: str, listed_by: Any, inspect: Any, label: Any) -> list[dict[str, Any]]:
            """List objects, then inspect each; one removed in between is skipped."""
            with _translate(url, timeout, f"listing {kind}s"):
                listed = listed_by()
            out = []
            for o in listed:
                with _translate(url, timeout, f"inspecting {kind} {label(o)}"):
                    try:
                        out.append(inspect(o["Id"]))
                    except docker_errors.NotFound:
                        continue
            return out

        networks = inspect_all("network", client.networks, client.inspect_network, lambda n: n.get("Name") or n["Id"])
        networks.sort(key=lambda n: str(n.get("Name", "")))
        containers = inspect_all("container", client.containers, client.inspect_container, lambda c: c["Id"][:12])
    return {"networks": networks, "containers": containers}, version if isinstance(version, str) else None


def inspect_one(docker_host: str | None, kind: str, ident: str, *, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any] | None:
    """One ``docker inspect`` of a container or network (``kind``) by id: one API call; None if it is gone."""
    with _client(docker_host, timeout, negotiate=False) as (client, url, docker_errors):
        with _translate(url, timeout, f"inspecting {kind} {ident[:12]}"):
            try:
                got = client.inspect_container(ident) if kind == "container" else client.inspect_network(ident)
            except docker_errors.NotFound:
                return None
    return got if isinstance(got, dict) else None


def engine_warning(url: str, version: str | None) -> str | None:
    """The one-line warning for an Engine whose firewall is not the one nftdocker writes (not 28.x), else None."""
    if version is not None and re.match(r"28\.", version):
        return None
    if version is None:
        said = "did not say which version it is"
    else:
        shown = "".join(ch if ch.isprintable() else "?" for ch in " ".join(version.split()))
        said = f"is version {shown[:40]!r}, not 28.x"
    return (f"the Docker Engine at {url} {said}: nftdocker writes the firewall of Docker Engine "
            f"{DOCKER_ENGINE_VERSION}, which may differ from the rules this Engine would write")


def events(
    docker_host: str | None = None,
    since: Any = None,
    *,
    until: Any = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Iterator[dict[str, Any]]:
    """The daemon's container and network events that can change the firewall, as they happen.

    Yields ``{"type", "action", "id", "attributes", "time_nano"}`` for container start/stop/die/
    destroy and network create/destroy/connect/disconnect (see EVENT_ACTIONS). ``attributes`` is
    the event's Actor.Attributes (a container's ``name`` and ``image``; for a network ``name``,
    ``type`` and, on connect/disconnect, the ``container`` id). ``since`` and ``until`` (a UTC
    datetime, or seconds since the epoch as an int or float string) replay past events; without
    ``until`` the generator waits for new ones for ever, and raises DockerError if the daemon goes
    away (resume with ``since=`` the last event's ``time_nano / 1e9``). Closing the generator closes
    the connection.
    """
    actions = sorted(set().union(*EVENT_ACTIONS.values()))
    filters = {"type": sorted(EVENT_ACTIONS), "event": actions}
    with _client(docker_host, timeout) as (client, url, _):
        with _translate(url, timeout, "subscribing to events"):
            stream = client.events(since=since, until=until, filters=filters, decode=True)
        try:
            while True:
                with _translate(url, timeout, "reading events"):
                    try:
                        ev = next(stream)
                    except StopIteration:
                        break
                typ = ev.get("Type")
                action = ev.get("Action") or ev.get("status")
                if action not in EVENT_ACTIONS.get(typ, ()):
                    continue
                actor = ev.get("Actor") or {}
                yield {
                    "type": typ,
                    "action": action,
                    "id": actor.get("ID") or ev.get("id", ""),
                    "attributes": dict(actor.get("Attributes") or {}),
                    "time_nano": ev.get("timeNano"),
                }
        finally:
            stream.close()
    if until is None:
        raise DockerError(
            f"the Docker daemon at {url} closed the event stream (it stopped or restarted); "
            "start it again and resume with since= the last event's time"
        )


#: daemon.json keys that describe the daemon nftdocker stands in for, not the firewall to build:
#: a dockerd that nftdocker programs for runs with them off.
_DAEMON_KEYS_IGNORED = frozenset({"iptables", "ip6tables"})
DEFAULT_DAEMON_CONFIG = "/etc/docker/daemon.json"


def scenario_from_live(
    docker_host: str | None,
    daemon_config: str | None = None,
    ipv4_forwarding: str | bool | None = None,
    ipv6_forwarding: str | bool | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    warnings: list[str] | None = None,
    dump_out: dict[str, Any] | None = None,
) -> Any:
    """The Scenario of a running daemon: networks and containers from ``fetch_inspect``, ``[daemon]``
    from its daemon.json (``daemon_config``, else /etc/docker/daemon.json if it exists; only the keys
    a scenario's ``[daemon]`` takes, less ``iptables``/``ip6tables``, which such a daemon has off
    because nftdocker writes its firewall), ``[host]`` from the two forwarding arguments ("true"/
    "false" or bool; None keeps the scenario default). If the Engine is not 28.x, ``engine_warning``'s
    line is appended to ``warnings``."""
    import json
    from pathlib import Path

    from nftdocker.errors import ScenarioError
    from nftdocker.inputs import read_bytes
    from nftdocker.model import DAEMON_KEYS
    from nftdocker.scenario.context import Context
    from nftdocker.scenario.load import from_document

    doc: dict[str, Any] = {}
    path = daemon_config or (DEFAULT_DAEMON_CONFIG if Path(DEFAULT_DAEMON_CONFIG).is_file() else None)
    if path:
        data = read_bytes(path)
        try:
            raw = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ScenarioError(str(path), "", f"not UTF-8 text (byte {e.start})") from None
        except (json.JSONDecodeError, RecursionError) as e:
            raise ScenarioError(str(path), "", f"not JSON: {e}") from None
        if not isinstance(raw, dict):
            raise ScenarioError(str(path), "", "expected a JSON object (dockerd's daemon.json)")
        doc["daemon"] = {k: v for k, v in raw.items() if k in DAEMON_KEYS and k not in _DAEMON_KEYS_IGNORED}
    host: dict[str, bool] = {}
    for key, value in (("ipv4-forwarding", ipv4_forwarding), ("ipv6-forwarding", ipv6_forwarding)):
        if value is not None:
            host[key] = value if isinstance(value, bool) else str(value).lower() == "true"
    if host:
        doc["host"] = host
    dump, version = _fetch(docker_host, timeout)
    if dump_out is not None:  # the inspect objects themselves (watch keeps their ids)
        dump_out.update(dump)
    url, _ = _base_url(docker_host)
    warning = engine_warning(url, version)
    if warning and warnings is not None:
        warnings.append(warning)
    return from_document(Context(f"Docker daemon at {url}"), doc, Path("."), inspect=dump)


# --------------------------------------------------------------------------- internals


_API_VERSIONS: dict[str, str] = {}  # daemon URL -> the API version negotiated with it


def _base_url(docker_host: str | None) -> tuple[str, dict[str, Any]]:
    """The daemon URL and the APIClient's keyword arguments for it."""
    if docker_host:
        url = f"unix://{docker_host}" if docker_host.startswith("/") else docker_host
        return url, {"base_url": url}
    from docker.utils import kwargs_from_env

    kwargs = kwargs_from_env()
    kwargs.setdefault("base_url", DEFAULT_HOST)
    return kwargs["base_url"], kwargs


@contextmanager
def _client(docker_host: str | None, timeout: float, negotiate: bool = True) -> Iterator[tuple[Any, str, Any]]:
    try:
        import docker
        import docker.errors
    except ImportError:
        raise DockerError(
            "the Python package 'docker' is not installed; install it (pip install docker) to read a live daemon"
        ) from None
    url = docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_HOST
    with _translate(url, timeout, "connecting"):
        url, kwargs = _base_url(docker_host)
        # Reading the whole daemon negotiates the API version (GET /version); watch's one inspect
        # per event reuses what was negotiated with that daemon last.
        client = docker.APIClient(version="auto" if negotiate else _API_VERSIONS.get(url, "auto"), timeout=timeout, **kwargs)
        _API_VERSIONS[url] = client.api_version
    try:
        yield client, url, docker.errors
    finally:
        client.close()


@contextmanager
def _translate(url: str, timeout: float, doing: str) -> Iterator[None]:
    """Turn whatever the SDK, requests or the socket raise into one DockerError."""
    try:
        yield
    except DockerError:
        raise
    except Exception as e:
        message = _describe(e, url, timeout, doing)
        if message is None:
            raise
        raise DockerError(message) from e


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """exc and everything it wraps: __cause__, __context__, exception args, urllib3's .reason."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        for nxt in (e.__cause__, e.__context__, getattr(e, "reason", None), *getattr(e, "args", ())):
            if isinstance(nxt, BaseException):
                todo.append(nxt)


def _describe(exc: Exception, url: str, timeout: float, doing: str) -> str | None:
    """The one-line message for exc, or None if it is not a failure to talk to the daemon."""
    import docker.errors
    import requests.exceptions

    where = url[len("unix://"):] if url.startswith("unix://") else url
    causes = list(_causes(exc))
    if isinstance(exc, docker.errors.APIError):
        detail = exc.explanation or str(exc)
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        return (
            f"the Docker daemon at {url} answered {exc.status_code or 'an error'} when {doing}: "
            f"{' '.join(str(detail).split())}; check the daemon's log"
        )
    for e in causes:
        if isinstance(e, (requests.exceptions.Timeout, TimeoutError)) or type(e).__name__ in (
            "ReadTimeoutError", "ConnectTimeoutError"
        ):
            return (
                f"the Docker daemon at {url} did not answer within {timeout:g} s when {doing}; "
                "check that it is running and not hung (docker info)"
            )
    for e in causes:
        if isinstance(e, OSError) and e.errno is not None:
            if e.errno == errno.ENOENT:
                return (
                    f"cannot reach the Docker daemon: {where} does not exist; "
                    "start dockerd, or set DOCKER_HOST (or --docker-host) to a running daemon's socket"
                )
            if e.errno in (errno.EACCES, errno.EPERM):
                return (
                    f"cannot reach the Docker daemon: permission denied on {where}; "
                    "run as root or as a member of the socket's group (usually docker)"
                )
            if e.errno in (errno.ECONNREFUSED, errno.ENOTSOCK):
                return (
                    f"cannot reach the Docker daemon: nothing is listening on {where}; "
                    "start dockerd, or set DOCKER_HOST (or --docker-host) to a running daemon"
                )
    if isinstance(exc, (docker.errors.DockerException, requests.exceptions.RequestException, OSError)):
        detail = " ".join(str(exc).split()) or type(exc).__name__
        if "paramiko" in detail:
            return f"{url} needs the Python package paramiko for ssh://; install it (pip install paramiko) or use a unix:// or tcp:// address"
        if "Invalid bind address" in detail:
            return f"{url!r} is not a Docker daemon address ({detail}); give unix:///path/to/docker.sock or tcp://host:port"
        return (
            f"cannot talk to the Docker daemon at {url} when {doing}: {detail}; "
            "check that it is running and that DOCKER_HOST (or --docker-host) points at it"
        )
    return None
