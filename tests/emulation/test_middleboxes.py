"""Every middlebox model on real kernel traffic: client -- mb -- server, captures on both sides.

Each test shows what a model changes (the server-side capture against the client-side one)
and that it changes nothing else. ENO-bearing traffic comes from an add-option hook (the
NFQUEUE runner with the ``add-option`` packet model) on the endpoints' OUTPUT path, so the
kernel's own SYN, SYN-ACK, ACK and data segments carry kind 69.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import middleboxes
from middleboxes.helper import HelperBox
from testbed.errors import ProcessDiedError
from testbed.net.flows import Connection, connections
from testbed.net.network import Network
from testbed.net.pcap import options_of, read_segments
from testbed.net.state import netns_inode, pids_in_netns
from testbed.workload import Workload, run_workload
from tests.emulation.middlebox_support import (
    PORT,
    both_sides,
    c2s,
    connect,
    installed,
    mb_network,
    s2c,
)

ENO = 69
# Half-close and coalescing: the client writes N chunks, shuts down its sending side, and
# reads the server's answer, sent only after the server saw EOF.
SINK_SERVER = """
import socket
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("0.0.0.0", 6000)); ls.listen(8); print("ready", flush=True)
while True:
    c, _ = ls.accept(); got = b""
    while chunk := c.recv(65536):
        got += chunk
    c.sendall(b"got %d bytes" % len(got)); c.close()
"""
CHUNKED_CLIENT = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], 6000), timeout=5)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for _ in range(int(sys.argv[2])):
    s.sendall(b"x" * int(sys.argv[3])); time.sleep(0.001)
s.shutdown(socket.SHUT_WR)
print(s.recv(100).decode())
"""


# -- helpers ------------------------------------------------------------------------------


@contextmanager
def option_hook(net: Network, node: str, segments: str, data: str = "20", kind: int = ENO,
                table: str = "mangle", queue: int = 7) -> Iterator[None]:
    """Make ``node``'s kernel segments carry option ``kind`` (a test tool, not a box)."""
    stats = net.workdir / f"hook-{node}-{queue}.json"
    params = f'{{"kind": {kind}, "data": "{data}", "segments": "{segments}"}}'
    proc = net.start_helper(node, f"hook:{node}", [
        sys.executable, "-m", "middleboxes.nfq", "--model", "add-option", "--params", params,
        "--queue", str(queue), "--stats", str(stats)], ready="ready")
    rule = ["OUTPUT", "-p", "tcp", "-j", "NFQUEUE", "--queue-num", str(queue)]
    net.run(node, ["iptables", "-w", "-t", table, "-A", *rule])
    try:
        yield
    finally:
        net.run(node, ["iptables", "-w", "-t", table, "-D", *rule])
        net.stop_helper(proc)


@contextmanager
def helper(net: Network, node: str, argv: list[str], ready: str = "ready",
           **kwargs: Any) -> Iterator[subprocess.Popen[str]]:
    proc = net.start_helper(node, argv[0], argv, ready=ready, essential=False, **kwargs)
    try:
        yield proc
    finally:
        net.stop_helper(proc)


def plain_server(net: Network) -> Any:
    return helper(net, "server", [sys.executable, "-m", "testbed.apps.server", "--port",
                                  str(PORT)])


def only_conn(path: Path, port: int = PORT) -> Connection:
    conns = [c for c in connections(read_segments(path)).values()
             if c.key.server_port == port]
    assert len(conns) == 1, f"{len(conns)} connections to port {port} in {path}"
    return conns[0]


def has_eno(segment: Any) -> bool:
    return bool(options_of(segment, ENO))


def nops_for_eno(raw: bytes) -> bytes:
    """``raw`` with every kind-69 option overwritten by NOPs, as TCPOPTSTRIP does."""
    out, i = bytearray(raw), 0
    while i < len(raw) and raw[i] != 0:
        length = 1 if raw[i] == 1 else raw[i + 1]
        if raw[i] == ENO:
            out[i:i + length] = b"\x01" * length
        i += length
    return bytes(out)


def ruleset(net: Network) -> set[str]:
    """Rules and user chains in mb (counters and built-in chain policies left out)."""
    out = net.run("mb", ["iptables-save"])
    return {line for line in out.splitlines()
            if line.startswith("-A") or (line.startswith(":") and " - " in line)}


def bound_queues(net: Network) -> str:
    return net.run("mb", ["cat", "/proc/net/netfilter/nfnetlink_queue"]).strip()


def mb_pids(net: Network) -> set[int]:
    inode = netns_inode(net.nodes["mb"].pid)
    assert inode is not None
    return set(pids_in_netns(inode))


def workload_ok(net: Network, **kw: Any) -> list[dict[str, Any]]:
    records = run_workload(net, Workload(proto="plain", **kw))
    assert all(r["bytes_ok"] for r in records), records
    return records


# -- install / remove / death -------------------------------------------------------------


@pytest.mark.parametrize("spec", sorted(e["name"] for e in middleboxes.catalogue()))
def test_install_and_remove_leave_nothing_behind(spec: str) -> None:
    with mb_network() as net:
        rules, queues, pids = ruleset(net), bound_queues(net), mb_pids(net)
        box = middleboxes.create(spec)
        box.install(net, "mb")
        try:
            assert ruleset(net) > rules
            if isinstance(box, HelperBox):
                assert box.helper is not None and box.helper.pid in mb_pids(net)
        finally:
            box.remove()
        assert ruleset(net) == rules
        assert bound_queues(net) == queues == ""
        assert mb_pids(net) == pids


@pytest.mark.parametrize("spec,fails_as", [("isn-rewrite", "timeout"),
                                           ("tcp-proxy", "refused")])
def test_a_dead_box_is_a_visible_failure(spec: str, fails_as: str) -> None:
    with mb_network() as net, plain_server(net):
        rules = ruleset(net)
        box = middleboxes.create(spec)
        box.install(net, "mb")
        assert connect(net, send="x").startswith("ok")
        assert isinstance(box, HelperBox) and box.helper is not None
        os.kill(box.helper.pid, signal.SIGKILL)
        box.helper.proc.wait(timeout=5)
        with pytest.raises(ProcessDiedError, match=f"middlebox:{spec}"):
            net.check()
        # No --queue-bypass and no fallback route: the path does not silently heal.
        assert connect(net, send="x") == fails_as
        with pytest.raises(ProcessDiedError):
            box.remove()
        assert ruleset(net) == rules  # the rules went even though the process had died


# -- option handling ----------------------------------------------------------------------

# model -> ENO seen by the server on (SYN, first ACK, later segments), by the client on SYN-ACK
ENO_MATRIX = {
    "passthrough": (True, True, True, True),
    "strip-eno-syn": (False, True, True, True),
    "strip-eno-synack": (True, True, True, False),
    "strip-eno-ack": (True, False, True, True),
    "strip-eno": (False, False, False, False),
    "strip-unknown-options": (False, False, False, False),
}


@pytest.mark.parametrize("spec", sorted(ENO_MATRIX))
def test_eno_stripping_on_kernel_segments(spec: str, tmp_path: Path) -> None:
    with mb_network() as net, installed(net, spec) as box, \
            option_hook(net, "client", "all"), option_hook(net, "server", "synack", "21"), \
            both_sides(net, tmp_path) as (cpath, spath):
        workload_ok(net, connections=1)
        counters = box.counters()
    client_side, server_side = only_conn(cpath), only_conn(spath)
    sent, arrived = c2s(client_side), c2s(server_side)
    assert all(has_eno(seg) for seg in sent), "the client hook marks every segment"
    assert len(sent) == len(arrived) >= 4
    syn, first, later = arrived[0], arrived[1], arrived[2:]
    seen = (has_eno(syn), has_eno(first), all(has_eno(s) for s in later),
            has_eno(s2c(client_side)[0]))
    assert seen == ENO_MATRIX[spec]
    assert any(not has_eno(s) for s in later) is (not ENO_MATRIX[spec][2])
    for before, after in zip(sent + s2c(server_side), arrived + s2c(client_side), strict=True):
        # Stripping writes NOPs in place; every other byte, options included, is kept.
        assert after.options_raw in (before.options_raw, nops_for_eno(before.options_raw))
        assert (after.seq, after.ack, after.payload) == (before.seq, before.ack, before.payload)
    assert counters["seen"] >= len(sent) and counters["changed"] == sum(
        has_eno(b) and not has_eno(a) for b, a in zip(sent + s2c(server_side),
                                                      arrived + s2c(client_side), strict=True))


def test_normaliser_keeps_known_options_and_nops_the_rest(tmp_path: Path) -> None:
    with mb_network() as net, installed(net, "strip-unknown-options"), \
            option_hook(net, "client", "syn"), \
            option_hook(net, "client", "syn", "454e", kind=253, table="filter", queue=8), \
            both_sides(net, tmp_path) as (cpath, spath):
        workload_ok(net, connections=1)
    sent, arrived = c2s(only_conn(cpath))[0], c2s(only_conn(spath))[0]
    assert options_of(sent, 253) == [b"\x45\x4e"] and has_eno(sent)
    kinds_after = [kind for kind, _ in arrived.options]
    assert set(kinds_after) == {1, 2, 3, 4, 8, 0}  # NOP, MSS, WS, SACK-perm, TS, EOL
    for kind in (2, 3, 4, 8):
        assert options_of(arrived, kind) == options_of(sent, kind)
    assert len(arrived.options_raw) == len(sent.options_raw)


@pytest.mark.parametrize("spec,outcome,dropped,reset", [
    ("drop-syn-unknown-option", "timeout", True, False),
    ("rst-syn-unknown-option", "refused", True, True),
])
def test_syns_with_unknown_options_are_refused(spec: str, outcome: str, dropped: bool,
                                               reset: bool, tmp_path: Path) -> None:
    with mb_network() as net, plain_server(net), installed(net, spec) as box:
        assert connect(net, send="x").startswith("ok"), "plain SYNs carry known options only"
        with option_hook(net, "client", "syn"), both_sides(net, tmp_path) as (cpath, spath):
            assert connect(net) == outcome
        counters = box.counters()
    assert not read_segments(spath), "no SYN with ENO reached the server"
    client_side = read_segments(cpath)
    assert any(s.is_syn and has_eno(s) for s in client_side)
    assert any(s.is_rst and s.src == "10.0.2.2" for s in client_side) is reset
    assert (counters["dropped"] >= 1) is dropped and (counters["reset"] >= 1) is reset


# -- stream handling ----------------------------------------------------------------------


def test_isn_rewrite_shifts_seq_one_way_and_acks_back(tmp_path: Path) -> None:
    offset = 0x10000000
    with mb_network() as net, \
            installed(net, f"isn-rewrite:offset={offset}"), option_hook(net, "client", "syn"), \
            both_sides(net, tmp_path) as (cpath, spath):
        workload_ok(net, connections=2, response_size=6000)
    for cconn, sconn in zip(sorted(connections(read_segments(cpath)).values(),
                                   key=lambda c: c.key.client_port),
                            sorted(connections(read_segments(spath)).values(),
                                   key=lambda c: c.key.client_port), strict=True):
        for before, after in zip(c2s(cconn), c2s(sconn), strict=True):
            assert after.seq == (before.seq + offset) % 2**32
            assert (after.ack, after.options_raw) == (before.ack, before.options_raw)
        for before, after in zip(s2c(sconn), s2c(cconn), strict=True):
            assert after.ack == (before.ack - offset) % 2**32 or not before.is_ack
            assert (after.seq, after.options_raw) == (before.seq, before.options_raw)
        assert has_eno(c2s(sconn)[0]), "options pass untouched, ENO included"


def test_resegment_splits_with_options_copied(tmp_path: Path) -> None:
    with mb_network() as net, \
            installed(net, "resegment:split=200,coalesce=false"), \
            both_sides(net, tmp_path) as (cpath, spath):
        workload_ok(net, connections=1, response_size=5000)
    sent = [s for s in s2c(only_conn(spath)) if s.payload_len]
    pieces = [s for s in s2c(only_conn(cpath)) if s.payload_len]
    assert max(s.payload_len for s in sent) > 200 >= max(s.payload_len for s in pieces)
    assert len(pieces) >= 25
    for piece in pieces:
        # A retransmission (tail loss probe) covers the same bytes with a newer timestamp,
        # so the piece must match one of the segments that carried its bytes.
        origins = [s.options_raw for s in sent
                   if 0 <= (piece.seq - s.seq) % 2**32 < s.payload_len]
        assert piece.options_raw in origins  # TSO-style copy, timestamps included
    assert only_conn(cpath).stream_chunks("s2c") == only_conn(spath).stream_chunks("s2c")


def test_resegment_coalesces_small_writes(tmp_path: Path) -> None:
    with mb_network() as net, helper(net, "server", [sys.executable, "-c", SINK_SERVER]), \
            installed(net, "resegment:split=1000,coalesce=true,hold_ms=30") as box, \
            both_sides(net, tmp_path) as (cpath, spath):
        out = net.run("client", [sys.executable, "-c", CHUNKED_CLIENT, net.ip("server"),
                                 "20", "10"], timeout=15)
        counters = box.counters()
    assert out.strip() == "got 200 bytes"
    sent = [s for s in c2s(only_conn(cpath, 6000)) if s.payload_len]
    arrived = [s for s in c2s(only_conn(spath, 6000)) if s.payload_len]
    assert len(arrived) < len(sent) and max(s.payload_len for s in arrived) > 10
    # Counted in sequence space: a tail loss probe fired while the box held the tail is a
    # second copy of bytes already counted, not more data.
    assert [len(c) for c in only_conn(spath, 6000).stream_chunks("c2s")] == [200]
    assert sum(s.payload_len for s in arrived) <= sum(s.payload_len for s in sent), \
        "the box adds no copy the client did not send"
    assert counters["changed"] >= 1


def test_tcp_proxy_terminates_tcp_and_keeps_half_close(tmp_path: Path) -> None:
    with mb_network() as net, installed(net, "tcp-proxy") as box, \
            helper(net, "server", [sys.executable, "-c", SINK_SERVER]), \
            option_hook(net, "client", "syn"), both_sides(net, tmp_path) as (cpath, spath):
        workload_ok(net, connections=2, response_size=3000)
        out = net.run("client", [sys.executable, "-c", CHUNKED_CLIENT, net.ip("server"),
                                 "3", "100"], timeout=15)
        counters = box.counters()
    assert out.strip() == "got 300 bytes"  # answer sent after the client's FIN went through
    client_side = [c for c in connections(read_segments(cpath)).values()]
    server_side = [c for c in connections(read_segments(spath)).values()]
    assert len(client_side) == len(server_side) == 3
    assert {c.key.client for c in server_side} == {net.link_ip("mb-server", "mb")}
    assert {c.key.server for c in client_side} == {net.ip("server")}
    assert all(has_eno(c2s(c)[0]) for c in client_side)
    assert not any(has_eno(c2s(c)[0]) for c in server_side), "SYN options are not carried"
    isns = {c2s(c)[0].seq for c in client_side} & {c2s(c)[0].seq for c in server_side}
    assert not isns, "the proxy's connections are its own"
    assert counters == {"seen": 3, "changed": 3, "dropped": 0, "reset": 0}


def test_tamper_flips_bits_that_tcp_accepts(tmp_path: Path) -> None:
    with mb_network() as net, \
            installed(net, "tamper:rate=1,direction=s2c,seed=4") as box, \
            both_sides(net, tmp_path) as (cpath, spath):
        [record] = run_workload(net, Workload(proto="plain", response_size=3000))
        counters = box.counters()
    assert record["bytes_received"] == 3000 and not record["bytes_ok"]
    sent = [s for s in s2c(only_conn(spath)) if s.payload_len]
    got = [s for s in s2c(only_conn(cpath)) if s.payload_len]
    assert len(sent) == len(got) == counters["changed"]
    for before, after in zip(sent, got, strict=True):
        flipped = sum(bin(a ^ b).count("1") for a, b in zip(before.payload, after.payload,
                                                            strict=True))
        assert flipped == 1
    assert c2s(only_conn(cpath))[1:] and not any(
        s.is_rst for s in s2c(only_conn(cpath))), "no retransmission storm: checksums held"
