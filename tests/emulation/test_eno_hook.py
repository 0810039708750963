"""The ENO hook on the real Linux TCP stack, checked on the wire (issue 3 acceptance).

Every test builds its own network; hooks are stopped (a dead hook fails the test) and the
conftest checks that no namespace survives.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import topologies
from testbed.eno.rules import HookSpec, queue_status, rule_counters, start_hook
from testbed.net.capture import Capture
from testbed.net.flows import Connection, connections, payload_contains
from testbed.net.network import Network
from testbed.net.pcap import options_of, read_segments
from testbed.workload import Workload, run_workload
from tests.emulation.eno_support import (
    RAW_PEER,
    RESULTS,
    SIMULTANEOUS,
    STREAM_CLIENT,
    cross_syns,
    eno_hooks,
    run_script,
    stats,
    strip_rule,
)
from topologies import PathShape

ENO_KIND = 69
REQUEST_MAGIC = b"TQ\x01"  # testbed/apps/wire.py: the start of every application request


def eno_conns(pcap: Path, port: int = 5000) -> list[Connection]:
    return [c for k, c in connections(read_segments(pcap)).items() if k.server_port == port]


def handshake(conn: Connection):
    """SYN, SYN-ACK and A's third segment (first client non-SYN) of a connection."""
    segs = [cs.segment for cs in conn.segments]
    syn = next(s for s in segs if s.is_syn and not s.is_ack)
    synack = next(s for s in segs if s.is_syn and s.is_ack)
    ack = next(cs.segment for cs in conn.segments
               if cs.direction == "c2s" and not cs.segment.is_syn)
    return syn, synack, ack


def kinds(segment) -> list[int]:
    return [kind for kind, _ in segment.options if kind not in (0, 1)]


def test_eno_on_the_wire_data_flows_and_only_handshake_segments_reach_userspace(tmp_path):
    with Network(topologies.create("direct")) as net, eno_hooks(net):
        plain = run_workload(net, Workload(proto="plain"), pcap=tmp_path / "plain.pcap",
                             eno_hooks=False)
        work = Workload(proto="eno-test", connections=3, response_size=300_000)
        records = run_workload(net, work, pcap=tmp_path / "eno.pcap", eno_hooks=False)
        hook = {node: stats(net, node) for node in ("client", "server")}
        queued = {node: queue_status(net, node)[0] for node in ("client", "server")}
        counters = rule_counters(net, "client")
    assert plain[0]["bytes_ok"]
    for r in records:
        assert r["bytes_ok"] and r["error"] is None
        assert (r["eno"], r["tep"], r["role"], r["peer_role"]) == ("negotiated", "eno-test", "A",
                                                                    "B")
        assert r["outcome"] == "plaintext" and r["tep_label"] == "TEST ONLY - not encryption"
        assert r["session_id"] == r["session_id_peer"] and r["session_id"].startswith("20")
    plain_syn = handshake(eno_conns(tmp_path / "plain.pcap")[0])[0]
    conns = eno_conns(tmp_path / "eno.pcap")
    assert len(conns) == 3
    for conn in conns:
        syn, synack, ack = handshake(conn)
        # RFC 8547 §4.1/§4.2 and §4.6, as docs/protocols.md §1.7 works out.
        assert options_of(syn, ENO_KIND) == [bytes.fromhex("20")]  # 45 03 20: A, implicit b=0
        assert options_of(synack, ENO_KIND) == [bytes.fromhex("0120")]  # 45 04 01 20: B, b=1
        assert options_of(ack, ENO_KIND) == [b""]  # 45 02 on A's third segment
        # The kernel's own options are untouched: same kinds, same order, same MSS/WS.
        assert kinds(syn) == kinds(plain_syn) + [ENO_KIND]
        for kind in (2, 3, 4):
            assert options_of(syn, kind) == options_of(plain_syn, kind)
        assert kinds(synack)[:-1] == [2, 4, 8, 3]
        data_segments = sum(1 for cs in conn.segments if cs.segment.payload_len)
        assert data_segments > 200, "300 kB came back in many segments"
    # Only handshake-phase segments went through userspace: a bounded number per connection,
    # whatever the transfer size, none waiting, none lost. The windows of testbed/eno/rules.py
    # queue at most 8 per connection; every other segment among the connection's first
    # order_window packets and order_bytes bytes is queued too, so none overtakes another
    # (testbed/eno/marks.py); the byte bound keeps the 300 kB response's GSO frames out.
    windows = sum(sum(rules[:3]) for rules in counters.values())  # SYN, original, reply
    assert windows <= 8 * 4 + 8, counters
    for node in ("client", "server"):
        assert hook[node]["max_packets_per_conn"] <= HookSpec().order_window, hook[node]
        assert hook[node]["callbacks"] <= HookSpec().order_window * 4, hook[node]
        assert queued[node]["waiting"] == 0 and queued[node]["queue_dropped"] == 0
        assert queued[node]["user_dropped"] == 0
        assert queued[node]["id_sequence"] == hook[node]["callbacks"]
        assert hook[node]["counts"].get("internal_errors", 0) == 0
    assert sum(sum(v) for v in counters.values()) == hook["client"]["callbacks"]


@pytest.mark.parametrize("policy", ["opportunistic", "required"])
@pytest.mark.parametrize("where", ["syn", "synack", "ack"])
def test_eno_stripped_by_the_path(tmp_path, where, policy):
    pcaps = {"client": tmp_path / "client.pcap", "server": tmp_path / "server.pcap"}
    with Network(topologies.create("middlebox")) as net, eno_hooks(net):
        net.run("mb", strip_rule(where))
        with Capture(net.nodes["server"], net.intf("server"), pcaps["server"]), \
                Capture(net.nodes["client"], net.intf("client"), pcaps["client"]):
            records = run_workload(net, Workload(proto="eno-test", connections=2, policy=policy),
                                   eno_hooks=False)
        client, server = stats(net, "client"), stats(net, "server")
    # The segment as its sender sent it (with ENO) and as its receiver got it (NOPs instead).
    sender, receiver = ("client", "server") if where != "synack" else ("server", "client")
    index = ("syn", "synack", "ack").index(where)
    sent = handshake(eno_conns(pcaps[sender])[0])[index]
    got = handshake(eno_conns(pcaps[receiver])[0])[index]
    assert options_of(sent, ENO_KIND) and not options_of(got, ENO_KIND)
    assert (1, b"") in got.options and len(got.options_raw) == len(sent.options_raw)
    conns = eno_conns(pcaps["client"]) + eno_conns(pcaps["server"])
    if policy == "opportunistic":
        check_fallback(where, records, client, server)
    else:
        check_fail_closed(where, records, conns)


def test_a_path_dropping_eno_syns_costs_two_retransmissions_then_falls_back(tmp_path):
    """RFC 8547 §4.6 exception, opportunistic policy: the SYN and two retransmissions carry
    the same ENO option; the third retransmission leaves without it, gets through, and both
    ends run plain TCP knowing why. It costs three SYN timeouts: 1 + 1 + 1 s with linear SYN
    timeouts (net.ipv4.tcp_syn_linear_timeouts >= 3), 1 + 2 + 4 s without."""
    pcaps = {"client": tmp_path / "client.pcap", "server": tmp_path / "server.pcap"}
    with Network(topologies.create("middlebox")) as net, eno_hooks(net):
        net.run("mb", ["iptables", "-w", "-A", "FORWARD", "-p", "tcp", "--tcp-flags",
                       "SYN,ACK", "SYN", "--tcp-option", str(ENO_KIND), "-j", "DROP"])
        with Capture(net.nodes["server"], net.intf("server"), pcaps["server"]), \
                Capture(net.nodes["client"], net.intf("client"), pcaps["client"]):
            (record,) = run_workload(net, Workload(proto="eno-test", connections=1),
                                     eno_hooks=False)
        client, server = stats(net, "client"), stats(net, "server")
    assert record["outcome"] == "plaintext" and record["bytes_ok"], record
    assert record["fallback_reason"] == "syn_retransmission"
    assert record["peer_fallback_reason"] == "no_eno_in_syn"
    linear = int(net.sysctls["client"].get("net.ipv4.tcp_syn_linear_timeouts", "0")) >= 3
    # One-sided: the kernel never retransmits a SYN before its timeout (RFC 6298 §5).
    assert record["ttfb_ms"] >= (3000 if linear else 7000), (record["ttfb_ms"], linear)
    (conn,) = eno_conns(pcaps["client"])
    syns = [s for s in (cs.segment for cs in conn.segments) if s.is_syn and not s.is_ack]
    assert len(syns) == 4 and len({s.seq for s in syns}) == 1
    assert [bool(options_of(s, ENO_KIND)) for s in syns] == [True, True, True, False]
    assert len({bytes(options_of(s, ENO_KIND)[0]) for s in syns[:3]}) == 1, "unchanged (§4.6)"
    (arrived,) = eno_conns(pcaps["server"])
    server_syns = [cs.segment for cs in arrived.segments if cs.segment.is_syn]
    assert not any(options_of(s, ENO_KIND) for s in server_syns)
    assert client["fallback_reasons"] == {"syn_retransmission": 1}
    assert server["fallback_reasons"] == {"no_eno_in_syn": 1}


PLAIN_THEN_RESET = r"""
import socket, struct
srv = socket.create_server(("0.0.0.0", 5000))
print("ready", flush=True)
conn, _ = srv.accept()
for _ in range(12):
    conn.sendall(conn.recv(100))
conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
conn.close()  # a RST from the server's side: conntrack keeps the entry (CLOSE, 10 s)
srv.close()
"""
REUSE_CLIENT = r"""
import json, socket, sys
from testbed.stream import StreamConfig, connect
server, port = sys.argv[1], int(sys.argv[2])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.bind(("0.0.0.0", port))
s.connect((server, 5000))
for _ in range(12):
    s.sendall(b"x" * 10)
    s.recv(100)
try:
    s.recv(100)
except ConnectionResetError:
    pass
s.close()
sys.stdin.readline()  # the ENO server is up now
e = connect((server, 5000), StreamConfig(teps=("eno-test",)), timeout=5,
            local_address=("0.0.0.0", port))
print(json.dumps({"eno": e.info.eno, "reason": e.info.fallback_reason}))
e.close()
"""


def test_a_reused_four_tuple_gets_fresh_conntrack_counters():
    """A connection that exchanged more packets than the rules' windows and was reset by the
    server leaves its conntrack entry behind; a new connection on the same 4-tuple reopens it
    (the RST came from the other direction). Both hooks zero its counters on the new SYN, so
    they still see the first ACK segment and ENO is negotiated."""
    port = 40123
    with Network(topologies.create("direct")) as net, eno_hooks(net):
        ip = net.ip("server")
        plain = net.start_helper("server", "plain-server", [sys.executable, "-c",
                                 PLAIN_THEN_RESET], ready="ready", essential=False)
        client = net.popen("client", [sys.executable, "-c", REUSE_CLIENT, ip, str(port)],
                           stdin=subprocess.PIPE)
        plain.wait(timeout=10)
        eno_server = net.start_helper("server", "server", [
            sys.executable, "-m", "testbed.apps.server", "--proto", "eno-test"], ready="ready")
        out, err = client.communicate("go\n", timeout=20)
        assert client.returncode == 0, err[-2000:]
        result = json.loads(out.strip().splitlines()[-1])
        hooks = {node: stats(net, node)["conntrack"] for node in ("client", "server")}
        net.stop_helper(eno_server)
    assert result == {"eno": "negotiated", "reason": None}, (result, hooks)
    assert hooks["client"]["zeroed"] >= 1 and hooks["server"]["zeroed"] >= 1, hooks


def check_fallback(where, records, client, server):
    """RFC 8547 §4.6 rule 1 on each end; the data arrives intact as plain TCP."""
    for r in records:
        assert r["bytes_ok"] and r["outcome"] == "plaintext", r
    if where == "syn":  # Figure 10: B never saw ENO; A sees a SYN-ACK without it
        expected = {"client": "no_eno_in_synack", "server": "no_eno_in_syn"}
    elif where == "synack":  # Figure 11
        expected = {"client": "no_eno_in_synack", "server": "no_eno_in_ack"}
    else:
        # A sent and received ACK segments with ENO: enabled (§4.6); B's first ACK had none:
        # fallback. B's stream refuses A's TEP bytes, A reconnects without ENO.
        assert client["counts"]["negotiated"] == 2
        assert server["fallback_reasons"]["no_eno_in_ack"] == 2
        assert server["fallback_reasons"]["no_eno_in_syn"] == 2, "the retries carry no ENO"
        for r in records:
            assert r["fallback_reason"] == "peer_refused_tep"
            assert r["peer_fallback_reason"] == "no_eno_in_syn"
        return
    for r in records:
        assert (r["fallback_reason"], r["peer_fallback_reason"]) == (
            expected["client"], expected["server"])
        assert r["eno"] == r["peer_eno"] == "fallback"
    assert client["fallback_reasons"] == {expected["client"]: 2}
    assert server["fallback_reasons"] == {expected["server"]: 2}


def check_fail_closed(where, records, conns):
    """Policy required: a clear error on both sides, no application byte on the wire."""
    for r in records:
        assert r["outcome"] == "failed" and "EncryptionRequiredError" in r["error"], r
        assert r["peer_outcome"] == "failed" and r["peer_error"], r
    for conn in conns:
        assert not payload_contains(conn, REQUEST_MAGIC)
        if where != "ack":  # no TEP ever started: no payload at all
            assert all(cs.segment.payload_len == 0 for cs in conn.segments)
        assert any(cs.segment.is_rst for cs in conn.segments), "the connection was reset"


def test_same_b_bit_and_no_common_tep():
    with Network(topologies.create("direct")) as net, eno_hooks(net):
        server = net.start_helper("server", "server", [
            sys.executable, "-m", "testbed.apps.server", "--proto", "eno-test"], ready="ready")
        ip = net.ip("server")
        same_b = run_script(net, "client", STREAM_CLIENT, ip, "eno-test", "1")
        no_common = run_script(net, "client", STREAM_CLIENT, ip, "tcpcrypt-x25519", "0")
        both = run_script(net, "client", STREAM_CLIENT, ip, "tcpcrypt-x25519,eno-test", "0")
        reasons = stats(net, "server")["fallback_reasons"]
        net.stop_helper(server)
    # §4.3/§4.6 rule 3: an active opener with b = 1 meets a passive opener: B disables and
    # sends no ENO, so A's rule 1 fires on the SYN-ACK.
    assert (same_b["eno"], same_b["reason"]) == ("fallback", "no_eno_in_synack")
    # §4.6 rule 2: no TEP valid for both.
    assert (no_common["eno"], no_common["reason"]) == ("fallback", "no_eno_in_synack")
    assert reasons == {"same_b_bit": 1, "no_common_tep": 1}
    # §4.5: the one TEP in common wins whatever else A offered.
    assert (both["eno"], both["tep"]) == ("negotiated", "eno-test")


@pytest.mark.parametrize("b_bit", [True, False])
def test_simultaneous_open(b_bit):
    """Two active openers whose SYNs cross on a 40 ms path (RFC 8547 §4.3, Figure 12).

    The SYNs cross by construction: the middle host holds the first SYN until the other
    end's comes and then lets both go (the cross-syns model, middleboxes/pktmodel.py). Timed
    from the ends, they crossed only if both connect() calls fell within one one-way delay
    (20 ms), which a loaded machine does not promise."""
    topo = topologies.create("middlebox", path=PathShape(rtt_ms=40))
    with Network(topo) as net, eno_hooks(net), cross_syns(net, port=6000) as box:
        ends = {}
        for node, peer in (("client", "server"), ("server", "client")):
            proc = net.popen(node, [sys.executable, "-c", SIMULTANEOUS, net.ip(peer),
                                    "1" if (b_bit and node == "server") else "0", node],
                             stdin=subprocess.PIPE)
            assert proc.stdout.readline().strip() == "armed"
            ends[node] = proc
        for proc in ends.values():
            proc.stdin.write("go\n")
            proc.stdin.flush()
        out = {}
        for node, proc in ends.items():
            stdout, stderr = proc.communicate(timeout=20)
            assert proc.returncode == 0, stderr[-2000:]
            out[node] = json.loads(stdout.strip().splitlines()[-1])
        client, server = stats(net, "client"), stats(net, "server")
    assert box["counters"]["injected"] == 1, "one SYN held, released with the other"
    assert client["counts"]["syn_in"] >= 1 and server["counts"]["syn_in"] >= 1, "SYNs crossed"
    assert out["client"]["got"] == "hello from server"
    assert out["server"]["got"] == "hello from client"
    if b_bit:  # exactly one end configured b = 1: it is B, and the TEP runs
        assert (out["client"]["role"], out["server"]["role"]) == ("A", "B")
        assert out["client"]["eno"] == out["server"]["eno"] == "negotiated"
        assert out["client"]["sid"] == out["server"]["sid"]
        assert out["client"]["transcript"] == out["server"]["transcript"]
    else:  # two default active openers: same b, both fall back (§4.3)
        assert out["client"]["reason"] == out["server"]["reason"] == "same_b_bit"


def test_a_plain_app_and_a_dead_hook(tmp_path):
    """Unregistered ports pass untouched; with the hook gone, --queue-bypass gives plain TCP."""
    with Network(topologies.create("direct")) as net, eno_hooks(net, ("client",)):
        server_hook = start_hook(net, "server", essential=False)
        plain = run_workload(net, Workload(proto="plain"), pcap=tmp_path / "p.pcap",
                             eno_hooks=False)
        assert plain[0]["bytes_ok"]
        syn = handshake(eno_conns(tmp_path / "p.pcap")[0])[0]
        assert options_of(syn, ENO_KIND) == []
        server_hook.kill()  # the rules stay: segments now bypass the unbound queue
        server_hook.wait()
        records = run_workload(net, Workload(proto="eno-test", connections=2),
                               pcap=tmp_path / "dead.pcap", eno_hooks=False)
        net.stop_helper(server_hook)
    for r in records:
        assert r["bytes_ok"] and r["fallback_reason"] == "no_eno_in_synack", r
        assert r["peer_fallback_reason"] == "hook_unavailable", r
    # No stall, read from the wire: a queue without its reader would hold or drop the segments
    # it gets, and TCP would retransmit them. Bypassed, every segment is sent exactly once.
    conns = eno_conns(tmp_path / "dead.pcap")
    assert len(conns) == 2
    for conn in conns:
        kinds = [e.kind for e in conn.timeline()]
        assert "syn_retransmit" not in kinds and "synack_retransmit" not in kinds, kinds
        sent = [(cs.direction, cs.segment.seq) for cs in conn.segments
                if cs.segment.payload_len > 0]
        assert len(sent) == len(set(sent)), "a data segment was retransmitted"


KERNEL = "020405b40402080a0000000100000000" "01030307"  # MSS, SACKOK, TS, NOP, WS (20 bytes)


def syn_options(eno_hex: str) -> str:
    raw = bytes.fromhex(KERNEL + eno_hex.replace(" ", ""))
    return (raw + bytes(-len(raw) % 4)).hex()


# name -> (SYN option bytes after the kernel's, the server's RFC 8547 verdict)
MALFORMED = {
    "vacuous, global suboption only": ("4503 00", "vacuous_option"),
    "vacuous, empty": ("4502", "vacuous_option"),
    "vacuous, a bit only": ("4503 02", "vacuous_option"),
    "length byte as last byte": ("4503 80", "malformed_option"),
    "overlong SL: data past the option": ("4505 85a0 2020", "malformed_option"),
    "length byte then a global suboption": ("4505 8001 2020", "malformed_option"),
    "truncated: option length 1": ("4501", "no_eno_in_syn"),
    "truncated: length past the header": ("45ff 20", "no_eno_in_syn"),
    "legacy kind 253 ExID 0x454e only": ("fd04 454e", "no_eno_in_syn"),
    "duplicate ENO options": ("4503 20 4503 20", "multiple_eno"),
    "same b as the passive opener": ("4504 0120", "same_b_bit"),
    "unknown TEPs only": ("4504 7e7f", "no_common_tep"),
}
VALID = {  # well-formed offers of 0x20: B answers 45 04 01 20
    "z bits set (ignored)": "4504 1c20",
    "TEP 0x20 with data to the end": "4505 a0aabb",
    "length byte, data, then 0x20": "4507 81a1 aabb 20",
    "40-byte option space full": "4503 20 " + "01" * 17,
}


def test_malformed_eno_from_a_crafted_peer_never_crashes_or_stalls():
    cases = {name: {"syn": syn_options(body)} for name, (body, _) in MALFORMED.items()}
    cases.update({name: {"syn": syn_options(body)} for name, body in VALID.items()})
    cases["whole 40 bytes are ENO"] = {"syn": ("4528a0" + "ab" * 37)}
    cases["SYN data beside ENO"] = {"syn": syn_options("4503 20"), "data": "68656c6c6f"}
    cases["third segment with non-empty non-SYN-form ENO"] = {
        "syn": syn_options("4503 20"), "third": "0101080a00000002000000014505ffffff000000"}
    with Network(topologies.create("direct")) as net, eno_hooks(net, ("server",)):
        server = net.start_helper("server", "server", [
            sys.executable, "-m", "testbed.apps.server", "--proto", "eno-test"], ready="ready")
        seen = run_script(net, "client", RAW_PEER, net.ip("server"), net.ip("client"),
                          json.dumps(cases), timeout=60)
        ports = [answer["port"] for answer in seen.values()]
        verdicts = run_script(net, "server", RESULTS, net.ip("server"), net.ip("client"),
                              json.dumps(ports))
        hook = stats(net, "server")
        waiting = queue_status(net, "server")[0]["waiting"]
        net.stop_helper(server)
        with eno_hooks(net, ("client",)):  # and a real ENO connection still works
            after = run_workload(net, Workload(proto="eno-test"), eno_hooks=False)[0]
    assert all(answer is not None for answer in seen.values()), "every SYN was answered"
    for name, (_, reason) in MALFORMED.items():
        answer = seen[name]
        assert not bytes.fromhex(answer["options"]).endswith(bytes.fromhex("45040120")), name
        verdict = verdicts[str(answer["port"])]
        assert (verdict["outcome"], verdict["reason"]) == ("fallback", reason), name
    for name in [*VALID, "whole 40 bytes are ENO"]:
        assert seen[name]["options"].endswith("45040120"), name  # §4.5: B answers 0x20
    third = verdicts[str(seen["third segment with non-empty non-SYN-form ENO"]["port"])]
    assert third["outcome"] == "negotiated", "§4.1: non-SYN-form contents are ignored"
    assert seen["SYN data beside ENO"]["ack"] == 1001, "SYN data not acknowledged (§4.7)"
    assert hook["counts"]["syn_data_discarded"] == 1
    assert hook["counts"].get("internal_errors", 0) == 0
    assert hook["counts"].get("core_errors", 0) == 0 and waiting == 0
    assert after["bytes_ok"] and after["eno"] == "negotiated"


def one_round(net: Network, nodes: tuple[str, ...], expiry: float) -> tuple[list, dict, dict]:
    """1,000 sequential then 200 concurrent connections; the hooks' stats when busy and once
    their tables have drained."""
    records = run_workload(net, Workload(proto="eno-test", connections=1000), eno_hooks=False)
    records += run_workload(net, Workload(proto="eno-test", connections=200, concurrency=200),
                            eno_hooks=False)
    busy = {node: stats(net, node) for node in nodes}
    deadline = time.monotonic() + 3 * expiry + 2
    drained = busy
    while time.monotonic() < deadline:
        drained = {node: stats(net, node) for node in nodes}
        if all(d["table_size"] == 0 for d in drained.values()):
            break
        time.sleep(0.5)
    return records, busy, drained


def test_a_thousand_sequential_and_two_hundred_concurrent_connections():
    """Twice, through the same two hooks: nothing misclassified, tables drain after expiry,
    and the second round adds no memory (a leak would grow with every connection)."""
    spec = HookSpec(expiry=2.0)
    nodes = ("client", "server")
    with Network(topologies.create("direct")) as net, eno_hooks(net, spec=spec):
        first, _, settled = one_round(net, nodes, spec.expiry)
        second, busy, drained = one_round(net, nodes, spec.expiry)
        # A segment the queue or the hook's socket dropped shows here (a lost SYN costs a
        # 1 s retransmission; the records then say which connections met it).
        queued = {node: queue_status(net, node)[0] for node in nodes}
    wrong = [r for r in first + second if not (
        r["bytes_ok"] and r["eno"] == "negotiated" and r["peer_eno"] == "negotiated"
        and r["tep"] == "eno-test" and r["session_id"] == r["session_id_peer"])]
    assert len(first) == len(second) == 1200
    assert not wrong, f"{len(wrong)} misclassified, first: {wrong[0]}; queues: {queued}"
    for node in nodes:
        assert queued[node]["queue_dropped"] == queued[node]["user_dropped"] == 0, queued
    for node in nodes:
        counts = busy[node]["counts"]
        assert counts["negotiated"] == 2400 and "fallback" not in counts, counts
        assert settled[node]["table_size"] == drained[node]["table_size"] == 0, "entries expire"
        # A leak of objects shows in the Python allocator's live blocks: one small object per
        # connection would add 1,200. RSS also moves with how freed memory is reused (a pymalloc
        # arena is 256 KiB; a round interleaved differently under load touched three more in a
        # CI run, 776 KiB, with no leak), so it only bounds leaks of large buffers (3.4 KiB or
        # more per connection).
        blocks = drained[node]["py_blocks"] - settled[node]["py_blocks"]
        grown = drained[node]["rss_kib"] - settled[node]["rss_kib"]
        print(f"{node} hook RSS after round 1 {settled[node]['rss_kib']} KiB, "
              f"after round 2 {drained[node]['rss_kib']} KiB; Python blocks "
              f"{settled[node]['py_blocks']} and {drained[node]['py_blocks']}")
        assert blocks < len(second) // 4, f"{node} hook kept {blocks} more objects in round 2"
        assert grown < 4096, f"{node} hook RSS grew {grown} KiB in the second round"


def test_probe_cli_shows_negotiation_and_fallback():
    def probe(*args: str) -> list[dict]:
        proc = subprocess.run([sys.executable, "-m", "testbed", "probe", "--proto", "eno-test",
                               "--repeat", "2", *args], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr
        return [json.loads(line) for line in proc.stdout.splitlines()]

    from testbed.probe import PROBE_KEYS

    ok = probe()
    assert list(ok[0])[: len(PROBE_KEYS)] == list(PROBE_KEYS)
    for r in ok:
        assert (r["tep"], r["tep_label"], r["eno"]) == (
            "eno-test", "TEST ONLY - not encryption", "negotiated")
        assert r["outcome"] == "plaintext" and r["fallback_reason"] is None and r["bytes_ok"]
        assert r["session_id"] == r["session_id_peer"]
    stripped = probe("--middlebox", "strip-eno")
    for r in stripped:
        assert (r["outcome"], r["eno"], r["fallback_reason"]) == (
            "plaintext", "fallback", "no_eno_in_synack")
        assert r["peer_fallback_reason"] == "no_eno_in_syn" and r["bytes_ok"]
    refused = probe("--middlebox", "strip-eno", "--policy", "required")
    for r in refused:
        assert r["outcome"] == "failed" and "EncryptionRequiredError" in r["error"]
        assert r["peer_outcome"] == "failed"
