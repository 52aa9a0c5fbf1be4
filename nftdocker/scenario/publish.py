"""Port syntax: ``docker run -p`` mappings (``[HOST_IP:][HOST_PORT[-END]:]CONTAINER_PORT[-END][/PROTO]``)
expanded as the docker CLI does, and the ``PORT[-END]`` ranges they and ``expose`` are made of."""

from __future__ import annotations

import re
from ipaddress import ip_address
from typing import Any

from nftdocker.model import PROTOS, IPAddress, PortSpec
from nftdocker.scenario.context import Context, expect, parse_addr

PORT_RE = re.compile(r"^(\d+)(?:-(\d+))?$")


def port_range(ctx: Context, key: str, text: str, what: str) -> tuple[int, int]:
    """``PORT`` or ``LO-HI`` (``what``: container, host), each 1-65535: the first and last port."""
    m = PORT_RE.match(text)
    if not m:
        raise ctx.fail(key, f"{text!r} is not a {what} port or range")
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) else lo
    for p in (lo, hi):
        if not 1 <= p <= 65535:
            raise ctx.fail(key, f"port {p} is out of range 1-65535")
    if hi < lo:
        raise ctx.fail(key, f"range {text!r} ends before it starts")
    return lo, hi


def parse_publish(ctx: Context, key: str, text: Any) -> list[PortSpec]:
    """``[HOST_IP:][HOST_PORT[-END]:]CONTAINER_PORT[-END][/PROTO]``, expanded as the docker CLI does."""
    expect(ctx, key, text, str)
    spec = text.strip()
    proto = "tcp"
    if "/" in spec:
        spec, proto = spec.rsplit("/", 1)
        proto = proto.lower()
        if proto not in PROTOS:
            raise ctx.fail(key, f"{proto!r} is not a protocol ({', '.join(PROTOS)})")
    host_ip: IPAddress | None = None
    if spec.startswith("["):
        end = spec.find("]")
        if end < 0 or spec[end + 1 : end + 2] != ":":
            raise ctx.fail(key, f"{text!r}: an IPv6 host address must look like [ADDR]:PORT:PORT")
        host_ip = parse_addr(ctx, key, spec[1:end])
        if host_ip.version != 6:
            raise ctx.fail(key, f"{text!r}: only IPv6 addresses go in brackets")
        rest = spec[end + 2 :].split(":")
        if len(rest) != 2:
            raise ctx.fail(key, f"{text!r} is not a valid -p mapping")
        hostport, cport = rest
    else:
        parts = spec.split(":")
        if len(parts) == 1:
            hostport, cport = "", parts[0]
        elif len(parts) == 2:
            hostport, cport = parts
        elif len(parts) == 3:
            ip_text, hostport, cport = parts
            if ip_text:
                try:
                    host_ip = ip_address(ip_text)
                except ValueError:
                    raise ctx.fail(key, f"{ip_text!r} in {text!r} is not an IP address") from None
        else:
            raise ctx.fail(key, f"{text!r} is not a valid -p mapping (put IPv6 host addresses in brackets)")
    clo, chi = port_range(ctx, key, cport, "container")
    if hostport:
        hlo, hhi = port_range(ctx, key, hostport, "host")
    else:
        hlo = hhi = 0
    out: list[PortSpec] = []
    if chi > clo:
        if hlo and (hhi - hlo) != (chi - clo):
            if hhi == hlo:
                raise ctx.fail(key, f"{text!r}: a container port range needs a host range of the same length")
            raise ctx.fail(key, f"{text!r}: host and container ranges differ in length")
        for n in range(chi - clo + 1):
            hp = hlo + n if hlo else 0
            out.append(PortSpec(clo + n, proto, host_ip, hp, hp))  # type: ignore[arg-type]
    else:
        out.append(PortSpec(clo, proto, host_ip, hlo, hhi))  # type: ignore[arg-type]
    return out
