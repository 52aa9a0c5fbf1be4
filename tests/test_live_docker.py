"""nftdocker.live.engine against a real dockerd in a network namespace of its own (tests/dockerd.py).

The daemon tests need root and Debian's docker.io, containerd, runc and busybox-static; without
them they are skipped with the reason. The tests of an absent or hung daemon need neither.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest

pytest.importorskip("docker", reason="the docker SDK is not installed (pip install docker)")

try:
    from tests.dockerd import IMAGE, TestDaemon
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from dockerd import IMAGE, TestDaemon  # type: ignore[no-redef]

from nftdocker.errors import DockerError
from nftdocker.live.engine import events, fetch_inspect

# name -> subnet; the bridge device is named after the network
NETWORKS = {"bridgeA": "192.0.2.0/24", "bridgeB": "198.51.100.0/24"}
# name -> (network, docker run -p arguments, the IPv4 bindings Docker must report)
CONTAINERS = {
    "c1": ("bridgeA", ["-p", "8080:80"], {"80/tcp": {("0.0.0.0", "8080")}}),
    "c2": ("bridgeB", ["-p", "127.0.0.1:9090:90", "-p", "5353:53/udp"],
           {"90/tcp": {("127.0.0.1", "9090")}, "53/udp": {("0.0.0.0", "5353")}}),
    "c3": ("bridge", ["-p", "6000:60"], {"60/tcp": {("0.0.0.0", "6000")}}),
}


@pytest.fixture(scope="module")
def daemon():
    reason = TestDaemon.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with TestDaemon() as d:
        for name, subnet in NETWORKS.items():
            d.docker("network", "create", "-o", f"com.docker.network.bridge.name={name}", "--subnet", subnet, name)
        for name, (net, publish, _) in CONTAINERS.items():
            d.docker("run", "-d", "--name", name, "--network", net, *publish, IMAGE, "sleep", "3600")
        yield d


def _cli_dump(d: TestDaemon) -> dict[str, list[dict]]:
    """What `docker network inspect $(docker network ls -q)` and `docker inspect $(docker ps -q)` print."""
    net_ids = d.docker("network", "ls", "-q", "--no-trunc").stdout.split()
    ctr_ids = d.docker("ps", "-q", "--no-trunc").stdout.split()
    return {
        "networks": d.docker_json("network", "inspect", *net_ids),
        "containers": d.docker_json("inspect", "--type", "container", *ctr_ids) if ctr_ids else [],
    }


@pytest.mark.docker
def test_fetch_inspect_is_what_docker_inspect_prints(daemon):
    got = fetch_inspect(daemon.host)
    want = _cli_dump(daemon)
    assert set(got) == {"networks", "containers"}

    assert [n["Name"] for n in got["networks"]] == sorted(["bridge", "host", "none", *NETWORKS])
    assert sorted(n["Name"] for n in got["networks"]) == sorted(n["Name"] for n in want["networks"])
    assert sorted(c["Name"] for c in got["containers"]) == sorted(f"/{n}" for n in CONTAINERS)
    assert [c["Name"] for c in got["containers"]] == ["/c3", "/c2", "/c1"]  # newest first, as docker ps

    cli_nets = {n["Id"]: n for n in want["networks"]}
    for n in got["networks"]:
        w = cli_nets[n["Id"]]
        for key in ("Name", "Id", "Created", "Driver", "IPAM", "Internal", "EnableIPv6", "Options", "Containers"):
            assert n.get(key) == w.get(key), f"network {n['Name']}: {key}"
        assert n == w, f"network {n['Name']}"
    cli_ctrs = {c["Id"]: c for c in want["containers"]}
    assert set(cli_ctrs) == {c["Id"] for c in got["containers"]}
    for c in got["containers"]:
        w = cli_ctrs[c["Id"]]
        for key in ("Name", "Id", "Created", "HostConfig"):
            assert c[key] == w[key], f"container {c['Name']}: {key}"
        for key in ("Ports", "Networks", "IPAddress"):
            assert c["NetworkSettings"][key] == w["NetworkSettings"][key], f"container {c['Name']}: NetworkSettings.{key}"
        assert c == w, f"container {c['Name']}"


@pytest.mark.docker
def test_fetch_inspect_content(daemon):
    dump = fetch_inspect(daemon.host)
    nets = {n["Name"]: n for n in dump["networks"]}
    for name, subnet in NETWORKS.items():
        n = nets[name]
        assert n["Driver"] == "bridge"
        assert n["Options"]["com.docker.network.bridge.name"] == name
        assert [c["Subnet"] for c in n["IPAM"]["Config"]] == [subnet]
    assert nets["bridge"]["Options"]["com.docker.network.bridge.default_bridge"] == "true"

    ctrs = {c["Name"].lstrip("/"): c for c in dump["containers"]}
    for name, (net, _, ports) in CONTAINERS.items():
        settings = ctrs[name]["NetworkSettings"]
        assert list(settings["Networks"]) == [net]
        endpoint = settings["Networks"][net]
        assert endpoint["NetworkID"] == nets[net]["Id"]
        assert ctrs[name]["Id"] in nets[net]["Containers"]
        assert set(settings["Ports"]) == set(ports)
        for key, want in ports.items():
            got = {(b["HostIp"], b["HostPort"]) for b in settings["Ports"][key]}
            assert want <= got
            # Besides the IPv4 binding, an unspecified host address is also bound on "::".
            assert got - want <= {("::", port) for _, port in want}


@pytest.mark.docker
def test_fetch_inspect_uses_docker_host(daemon, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", daemon.host)
    assert {c["Name"] for c in fetch_inspect()["containers"]} == {f"/{n}" for n in CONTAINERS}
    # a bare socket path is taken as unix://
    assert len(fetch_inspect(str(daemon.socket_path))["networks"]) == len(NETWORKS) + 3


@pytest.mark.docker
def test_stopped_containers_are_left_out(daemon):
    daemon.docker("create", "--name", "c-created", "--network", "bridgeA", "-p", "7070:70", IMAGE, "sleep", "1")
    try:
        names = {c["Name"] for c in fetch_inspect(daemon.host)["containers"]}
        assert "/c-created" not in names
        assert names == {f"/{n}" for n in CONTAINERS}
    finally:
        daemon.docker("rm", "-f", "c-created")


@pytest.mark.docker
def test_live_dump_loads_as_a_scenario(daemon, tmp_path):
    scenario = pytest.importorskip("nftdocker.scenario.load")
    (tmp_path / "docker-inspect.json").write_text(json.dumps(fetch_inspect(daemon.host)))
    (tmp_path / "scenario.toml").write_text('docker-inspect = "docker-inspect.json"\n')
    s = scenario.load(tmp_path / "scenario.toml")
    assert {n.name: n.bridge for n in s.networks} == {"bridge": "docker0", "bridgeA": "bridgeA", "bridgeB": "bridgeB"}
    published = {c.name: sorted((p.container_port, p.proto, p.host_port) for p in c.publish) for c in s.containers}
    assert published == {"c1": [(80, "tcp", 8080)], "c2": [(53, "udp", 5353), (90, "tcp", 9090)], "c3": [(60, "tcp", 6000)]}


@pytest.mark.docker
def test_scenario_from_live(daemon, tmp_path):
    pytest.importorskip("nftdocker.scenario.load")
    from nftdocker.live.engine import scenario_from_live

    cfg = tmp_path / "daemon.json"
    cfg.write_text(json.dumps({"userland-proxy": False, "iptables": False, "log-level": "warn"}))
    s = scenario_from_live(daemon.host, str(cfg), "false", None)
    assert s.daemon.userland_proxy is False
    assert s.daemon.iptables is True  # a daemon nftdocker programs for runs with iptables off
    assert s.host.ipv4_forwarding is False
    assert [n.name for n in s.networks] == ["bridge", "bridgeA", "bridgeB"]
    assert sorted(c.name for c in s.containers) == sorted(CONTAINERS)


@pytest.mark.docker
def test_events_replay(daemon):
    since = time.time() - 0.5
    net_id = daemon.docker("network", "create", "-o", "com.docker.network.bridge.name=evnet", "--subnet",
                           "203.0.113.0/24", "evnet").stdout.strip()
    ctr_id = daemon.docker("run", "-d", "--name", "c-ev", "--network", "evnet", IMAGE, "sleep", "3600").stdout.strip()
    daemon.docker("rm", "-f", "c-ev")
    daemon.docker("network", "rm", "evnet")
    time.sleep(0.1)
    got = [e for e in events(daemon.host, since=since, until=time.time())
           if e["id"] in (net_id, ctr_id)]
    pairs = [(e["type"], e["action"]) for e in got]
    assert pairs[0] == ("network", "create") and pairs[-1] == ("network", "destroy"), pairs
    assert set(pairs) == {("network", "create"), ("network", "connect"), ("container", "start"),
                          ("container", "die"), ("network", "disconnect"), ("container", "destroy"),
                          ("network", "destroy")}, pairs
    assert pairs.index(("container", "start")) < pairs.index(("container", "die")) < pairs.index(("container", "destroy"))
    connect = got[pairs.index(("network", "connect"))]
    assert connect["attributes"]["container"] == ctr_id and connect["attributes"]["name"] == "evnet"
    assert got[pairs.index(("container", "start"))]["attributes"]["name"] == "c-ev"
    assert all(isinstance(e["time_nano"], int) for e in got)


@pytest.mark.docker
def test_events_follow_and_end_with_the_daemon():
    """Without until, events waits for new ones, and a daemon that stops is a DockerError."""
    reason = TestDaemon.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with TestDaemon() as d:  # a daemon of its own, with no container to slow its stop
        got: list[dict] = []
        errors: list[Exception] = []

        def follow() -> None:
            try:
                for e in events(d.host):
                    got.append(e)
            except Exception as e:  # noqa: BLE001 - handed to the main thread
                errors.append(e)

        t = threading.Thread(target=follow, daemon=True)
        t.start()
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:  # until the subscription is surely up
            d.docker("network", "create", f"n{time.monotonic_ns()}")
            time.sleep(0.2)
        assert got and got[0]["type"] == "network" and got[0]["action"] == "create"
        d.restart()
        t.join(10)
        assert not t.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], DockerError), errors
        assert "closed the event stream" in str(errors[0])


# --------------------------------------------------------------------------- no daemon


def test_absent_daemon_is_a_quick_docker_error(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(DockerError, match="does not exist"):
        fetch_inspect(f"unix://{tmp_path}/absent/docker.sock")
    with pytest.raises(DockerError, match="does not exist"):
        next(events(f"unix://{tmp_path}/absent/docker.sock"))
    assert time.monotonic() - t0 < 5


def test_refused_and_hung_daemons_are_docker_errors(tmp_path):
    refused = tmp_path / "refused.sock"
    hung = tmp_path / "hung.sock"
    with socket.socket(socket.AF_UNIX) as s1, socket.socket(socket.AF_UNIX) as s2:
        s1.bind(str(refused))  # bound, not listening: connection refused
        s2.bind(str(hung))
        s2.listen(8)  # accepts connections, never answers
        t0 = time.monotonic()
        with pytest.raises(DockerError, match="nothing is listening"):
            fetch_inspect(str(refused))
        with pytest.raises(DockerError, match="did not answer within 1 s"):
            fetch_inspect(f"unix://{hung}", timeout=1)
        assert time.monotonic() - t0 < 5


def test_bad_address_is_a_docker_error():
    with pytest.raises(DockerError, match="not a Docker daemon address"):
        fetch_inspect("foo://bar")


def test_docker_error_message_is_one_line(tmp_path):
    with pytest.raises(DockerError) as e:
        fetch_inspect(f"unix://{tmp_path}/nope.sock")
    assert "\n" not in str(e.value)
    assert os.fspath(tmp_path) in str(e.value) and "DOCKER_HOST" in str(e.value)
