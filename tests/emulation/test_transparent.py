"""Transparent mode: unmodified programs (iperf3, curl, python http.server, small socket
scripts) through the per-host proxies, over both TEPs and behind an ENO-stripping box."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import middleboxes
import topologies
from testbed.eno.bpf.attach import support_problem
from testbed.net.network import Network
from testbed.transparent import rules
from testbed.transparent.host import ProxySpec, TransparentHost, transparent

IPERF_PORT, WEB_PORT, SINK_PORT = 5201, 8000, 6000
# Both ENO datapaths where the kernel takes the bpf program (testbed/eno/bpf/attach.py).
DATAPATHS = ["nfqueue"] if support_problem() is not None else ["bpf", "nfqueue"]
OBJECT = bytes(range(256)) * 4096  # 1 MiB, a pattern any corruption would break

SINK_SERVER = """
import socket, struct, sys
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("0.0.0.0", 6000)); ls.listen(8); print("ready", flush=True)
while True:
    c, _ = ls.accept()
    first = c.recv(5)
    if first == b"reset":  # answer with a RST
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); c.close()
        continue
    got = len(first)
    while chunk := c.recv(65536):
        got += len(chunk)
    c.sendall(b"got %d bytes" % got); c.close()  # after the client's half-close
"""
SINK_CLIENT = """
import errno, json, socket, sys, time
t = time.monotonic(); out = {}
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    out["peer"] = list(s.getpeername()); out["local"] = list(s.getsockname())
    s.sendall(sys.argv[3].encode() * int(sys.argv[4])); s.shutdown(socket.SHUT_WR)
    reply = b""
    while chunk := s.recv(100):
        reply += chunk
    out["reply"] = reply.decode()
except OSError as exc:
    out["error"] = type(exc).__name__; out["errno"] = errno.errorcode.get(exc.errno or 0)
out["seconds"] = time.monotonic() - t
print(json.dumps(out))
"""


@contextmanager
def server_app(net: Network, argv: list[str], ready: str | None = "ready",
               port: int | None = None) -> Iterator[Any]:
    proc = net.start_helper("server", argv[0], argv, ready=ready, essential=False)
    try:
        if port is not None:
            wait_listening(net, "server", port)
        yield proc
    finally:
        net.stop_helper(proc)


def wait_listening(net: Network, node: str, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while f":{port} " not in net.run(node, ["ss", "-Hltn", f"sport = :{port}"]):
        assert time.monotonic() < deadline, f"nothing listens on {node}:{port}"
        time.sleep(0.05)


def specs(proto: str, policy: str = "opportunistic",
          ports: tuple[int, ...] = (IPERF_PORT, WEB_PORT, SINK_PORT)) -> dict[str, ProxySpec]:
    return {"client": ProxySpec(proto=proto, policy=policy),
            "server": ProxySpec(proto=proto, policy=policy, listen_ports=ports)}


def paired(hosts: dict[str, TransparentHost]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(client proxy record, server proxy record) of each relayed connection."""
    for host in hosts.values():  # records are written when each proxy has closed its pair
        host.wait_idle()
    server = {r["net_remote"]: r for r in hosts["server"].records() if r.get("net_remote")}
    client = sorted(hosts["client"].records(), key=lambda r: r["t_accept"])
    return [(r, server[r["net_local"]]) for r in client if r.get("net_local") in server]


def sink(net: Network, pattern: str = "x", count: int = 1, port: int = SINK_PORT) -> Any:
    out = net.run("client", [sys.executable, "-c", SINK_CLIENT, net.ip("server"), str(port),
                             pattern, str(count)], timeout=30)
    return json.loads(out.strip().splitlines()[-1])


def was_reset(result: dict[str, Any]) -> bool:
    """The sink client's connection was reset: ECONNRESET, or ENOTCONN when the RST arrived
    before its shutdown(SHUT_WR) (Linux's answer on a reset socket)."""
    return (result.get("error"), result.get("errno")) in (
        ("ConnectionResetError", "ECONNRESET"), ("OSError", "ENOTCONN"))


def assert_no_leftovers(net: Network, hosts: dict[str, TransparentHost]) -> None:
    for node, host in hosts.items():
        assert rules.leftovers(net, node) == []
        assert host.proc.poll() is not None, f"proxy in {node} still runs"


def web_root(tmp_path: Path) -> Path:
    """The directory http.server serves: o0.bin, o1.bin, o2.bin, OBJECT rotated by 0, 1, 2."""
    web = tmp_path / "www"
    web.mkdir()
    for i in range(3):
        (web / f"o{i}.bin").write_bytes(OBJECT[i:] + OBJECT[:i])
    return web


@pytest.mark.parametrize("datapath", DATAPATHS)
@pytest.mark.parametrize("proto,tep", [("tcpcrypt", "tcpcrypt-x25519"), ("tls", "tls")])
def test_iperf3_and_curl_through_both_designs(proto: str, tep: str, datapath: str,
                                              tmp_path: Path) -> None:
    web = web_root(tmp_path)
    with Network(topologies.create("direct")) as net:
        server = net.ip("server")
        with server_app(net, ["iperf3", "-s", "-p", str(IPERF_PORT)], ready=None,
                           port=IPERF_PORT), \
                server_app(net, [sys.executable, "-m", "http.server", str(WEB_PORT),
                                 "--protocol", "HTTP/1.1", "--directory", str(web)],
                           ready=None, port=WEB_PORT), \
                transparent(net, specs(proto), eno_datapath=datapath) as hosts:
            report = json.loads(net.run("client", [
                "iperf3", "-c", server, "-p", str(IPERF_PORT), "-n", "8M", "-J"], timeout=60))
            urls = [f"http://{server}:{WEB_PORT}/o{i}.bin" for i in range(3)]
            fetched = tmp_path / "fetched"
            net.run("client", ["curl", "-sS", "--fail", *urls, "-o", str(fetched) + "0",
                               "-o", str(fetched) + "1", "-o", str(fetched) + "2"], timeout=60)
            pairs = paired(hosts)
            net_local, net_remote = pairs[-1][0]["app_local"], pairs[-1][0]["app_remote"]
            sid = json.loads(net.run("client", [sys.executable, "-m", "testbed", "sid",
                                                net_local, net_remote]))
        assert_no_leftovers(net, hosts)
    # iperf3's receiver stops counting at the control connection's TEST_END, which may
    # overtake data still buffered in the proxies (with -n 8M even all of it): its count
    # trails what the sender wrote, so exact byte counts are checked on the control
    # connection and curl's below.
    assert "error" not in report and report["end"]["sum_sent"]["bytes"] >= 8 << 20
    for i in range(3):
        got = (tmp_path / f"fetched{i}").read_bytes()
        assert hashlib.sha256(got).digest() == hashlib.sha256(OBJECT[i:] + OBJECT[:i]).digest()
    # iperf3: a control and (at least) one data connection; curl: one for the three objects.
    ports = [c["app_remote"].rsplit(":", 1)[1] for c, _ in pairs]
    assert ports[0] == str(IPERF_PORT) and ports.count(str(IPERF_PORT)) >= 2
    assert ports[-1] == str(WEB_PORT) and ports.count(str(WEB_PORT)) == 1
    assert {h.eno_datapath for h in hosts.values()} == {datapath}
    for client, srv in pairs:
        assert client["eno_datapath"] == srv["eno_datapath"] == datapath
        assert client["outcome"] == srv["outcome"] == "encrypted"
        assert client["tep"] == srv["tep"] == tep
        assert client["session_id"] == srv["session_id"] is not None
    control, curl = pairs[0], pairs[-1]  # iperf3's control connection closes cleanly
    for client, srv in (control, curl):
        assert client["ended"] == srv["ended"] == "closed"
        assert client["app_bytes_in"] == srv["app_bytes_out"] > 0  # requests
        assert srv["app_bytes_in"] == client["app_bytes_out"] > 0  # responses
    assert curl[0]["app_bytes_out"] > 3 * len(OBJECT)
    curl_client = curl[0]
    assert sid["found"] and sid["session_id"] == curl_client["session_id"]


@pytest.mark.parametrize("proto,policy", [("tcpcrypt", "opportunistic"), ("plain", "off")])
def test_half_close_reset_and_refusal_reach_the_application(proto: str, policy: str) -> None:
    """Also with ENO off, where the proxies open each connection's other leg from their
    event loops (dial.py) rather than from a worker."""
    with Network(topologies.create("direct")) as net, \
            server_app(net, [sys.executable, "-c", SINK_SERVER]), \
            transparent(net, specs(proto, policy, ports=(SINK_PORT, SINK_PORT + 1))) as hosts:
        big = sink(net, "y", 3_000_000)  # half-close: the reply comes after our FIN
        reset = sink(net, "reset")
        refused = sink(net, "x", 1, port=SINK_PORT + 2)  # nothing listens, not diverted in
        no_app = sink(net, "x", 1, port=SINK_PORT + 1)  # diverted in, nothing behind it
        for host in hosts.values():
            host.wait_idle()
        records = hosts["client"].records()
        server_records = hosts["server"].records()
    assert big["reply"] == "got 3000000 bytes"
    assert big["peer"] == [net.ip("server"), SINK_PORT]  # the application sees its peer
    for failed in (reset, refused, no_app):
        # The exact fact is the reset itself: a hang would end as the sink's TimeoutError.
        assert was_reset(failed), failed
    assert any("ConnectionRefusedError" in str(r.get("error")) for r in records)
    assert any("application: ConnectionRefusedError" in str(r.get("error"))
               for r in server_records)
    # Relayed by the client proxy: the half-close and the reset (and, unless the server
    # proxy's reset overtook the end of the TEP handshake, the one it could not hand to an
    # application), each with the arm's outcome.
    relayed = sorted((r for r in records if r.get("outcome") != "failed"),
                     key=lambda r: r["t_accept"])
    # The datapath the proxy used, and none where it negotiates nothing (ENO off).
    assert {r["eno_datapath"] for r in records + server_records} == {
        None if policy == "off" else hosts["client"].eno_datapath}
    assert {r["outcome"] for r in relayed} == {
        "encrypted" if proto == "tcpcrypt" else "plaintext"}
    assert relayed[0]["app_bytes_in"] == 3_000_000 and relayed[0]["ended"] == "closed"
    assert relayed[1]["ended"].startswith("reset")


@pytest.mark.parametrize("datapath", DATAPATHS)
@pytest.mark.parametrize("policy", ["opportunistic", "required"])
def test_strip_eno_box_plaintext_or_refused(policy: str, datapath: str) -> None:
    with Network(topologies.create("middlebox")) as net:
        box = middleboxes.create("strip-eno")
        box.install(net, "mb")
        try:
            with server_app(net, [sys.executable, "-c", SINK_SERVER]), \
                    transparent(net, specs("tcpcrypt", policy), eno_datapath=datapath) as hosts:
                result = sink(net, "z", 1000)
                pairs, client = paired(hosts), hosts["client"].records()
        finally:
            box.remove()
        assert_no_leftovers(net, hosts)
    if policy == "opportunistic":
        assert result["reply"] == "got 1000 bytes"
        assert [(c["outcome"], s["outcome"]) for c, s in pairs] == [("plaintext", "plaintext")]
        assert pairs[0][0]["session_id"] is None and pairs[0][0]["fallback_reason"]
    else:
        assert was_reset(result), result
        assert client[0]["outcome"] == "failed" and "required" in client[0]["error"]
        assert not any(c.get("app_bytes_out") for c in client)


def test_dead_proxy_passes_plain_or_refuses() -> None:
    with Network(topologies.create("direct")) as net, \
            server_app(net, [sys.executable, "-c", SINK_SERVER]):
        outcomes = {}
        for policy in ("opportunistic", "required"):
            with transparent(net, {"client": ProxySpec(policy=policy)}, hooks=False) as hosts:
                host = hosts["client"]
                os.kill(host.proc.pid, signal.SIGKILL)
                deadline = time.monotonic() + 5
                while not host.events and time.monotonic() < deadline:
                    time.sleep(0.05)
                outcomes[policy] = (sink(net, "d", 10), host.events)
            assert rules.leftovers(net, "client") == []
    plain, events = outcomes["opportunistic"]
    assert plain["reply"] == "got 10 bytes" and "plain" in events[0]["action"]
    refused, events = outcomes["required"]
    assert refused.get("error") == "ConnectionRefusedError" and "refused" in events[0]["action"]
