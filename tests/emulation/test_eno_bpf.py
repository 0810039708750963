"""The bpf ENO datapath (testbed/eno/bpf) on the real Linux TCP stack, checked on the wire.

Same RFC 8547 checks as the NFQUEUE hook's tests (test_eno_hook.py), with the option
written and read by the kernel program: negotiation per TEP, the path stripping ENO from
each handshake segment under both policies, malformed options from a crafted peer, and
nothing left after a killed run plus clean.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import topologies
from experiments.common import reordered
from testbed.eno.bench import nfqueue_rules
from testbed.eno.bpf import attach
from testbed.eno.bpf.attach import ids_file, support_problem
from testbed.errors import KernelFeatureError
from testbed.net.capture import Capture
from testbed.net.network import Network
from testbed.net.pcap import options_of
from testbed.net.state import NetworkState, clean_bpf
from testbed.workload import Workload, run_workload
from tests.emulation.eno_support import RAW_PEER, eno_hooks, run_script, stats, strip_rule
from tests.emulation.test_eno_hook import (
    ENO_KIND,
    MALFORMED,
    VALID,
    check_fail_closed,
    eno_conns,
    handshake,
    syn_options,
)

NO_HOOK = r'''
import json
from testbed.eno.control import HookClient, HookUnavailableError
try:
    HookClient().close()
except HookUnavailableError:
    print(json.dumps("no hook"))
else:
    print(json.dumps("a hook"))
'''
pytestmark = pytest.mark.skipif(support_problem() is not None,
                                reason=f"no bpf datapath here: {support_problem()}")
SACK_KIND = 5


@pytest.mark.parametrize("proto", ["tcpcrypt", "tls", "eno-test"])
def test_fresh_teps_negotiate_in_the_kernel(tmp_path: Path, proto: str) -> None:
    pcap = tmp_path / "client.pcap"
    with Network(topologies.create("direct")) as net:
        records = run_workload(net, Workload(proto=proto, connections=2, eno_datapath="bpf"),
                               pcap=pcap)
        assert set(net.eno_bpf) == {"client", "server"}
        # No handshake or data segment leaves the kernel: no NFQUEUE rule could queue one,
        # and no hook listens on either host's control socket.
        assert [nfqueue_rules(net, node) for node in ("client", "server")] == [0, 0]
        for node in ("client", "server"):
            assert run_script(net, node, NO_HOOK) == "no hook", node
    for r in records:
        assert (r["eno"], r["peer_eno"], r["eno_datapath"]) == (
            "negotiated", "negotiated", "bpf"), r
        assert r["bytes_ok"] and r["session_id"] and r["session_id"] == r["session_id_peer"]
    conns = eno_conns(pcap)
    assert len(conns) == 2
    for conn in conns:
        syn, synack, ack = handshake(conn)
        (a_opt,), (b_opt,) = options_of(syn, ENO_KIND), options_of(synack, ENO_KIND)
        assert b_opt[0] & 0x01, "B's global suboption has b = 1 (§4.2)"
        assert options_of(ack, ENO_KIND) == [b""], "A's third segment: empty non-SYN ENO"
        # §4.6: no segment after B's first non-SYN segment needs ENO; none of B's carries it
        server_segs = [cs.segment for cs in conn.segments if cs.direction == "s2c"]
        assert not any(options_of(s, ENO_KIND) for s in server_segs if not s.is_syn)
        # No reordering: no SACK block above the cumulative ACK before the first FIN (a D-SACK
        # only reports a retransmission timer that fired on this loaded machine).
        assert reordered(conn) == 0
        assert a_opt and b_opt


@pytest.mark.parametrize("policy", ["opportunistic", "required"])
@pytest.mark.parametrize("where", ["syn", "synack", "ack"])
def test_eno_stripped_by_the_path(tmp_path: Path, where: str, policy: str) -> None:
    pcap = tmp_path / "client.pcap"
    with Network(topologies.create("middlebox")) as net:
        net.run("mb", strip_rule(where))
        with Capture(net.nodes["client"], net.intf("client"), pcap):
            records = run_workload(net, Workload(proto="eno-test", connections=2,
                                                 policy=policy, eno_datapath="bpf"))
    if policy == "required":
        check_fail_closed(where, records, eno_conns(pcap))
        return
    expected = {"syn": ("no_eno_in_synack", "no_eno_in_syn"),  # RFC 8547 Figure 10
                "synack": ("no_eno_in_synack", "no_eno_in_ack"),  # Figure 11
                # A enabled encryption, B fell back: B refuses A's TEP bytes (split check),
                # A reconnects without ENO
                "ack": ("peer_refused_tep", "no_eno_in_syn")}[where]
    for r in records:
        assert r["bytes_ok"] and r["outcome"] == "plaintext", r
        assert (r["fallback_reason"], r["peer_fallback_reason"]) == expected, r


def test_a_host_turned_off_keeps_its_program_unused_and_gets_it_back_without_a_reload() -> None:
    """A pooled network switching datapaths (latency's arms, the datapath experiment): off
    keeps the program attached to the empty cgroup while the hook takes the connections; on
    again reuses it (the same pinned program, no second verifier pass)."""
    nodes = ("client", "server")
    with Network(topologies.create("direct")) as net:
        first = run_workload(net, Workload(proto="tcpcrypt", connections=2, eno_datapath="bpf"))
        attached = dict(net.eno_bpf)
        progs = {node: (a.pins / "prog").stat().st_ino for node, a in attached.items()}
        # Off while a process of the host still runs in its cgroup: refused, nothing changes.
        sleeper = net.popen("server", ["sleep", "30"])
        try:
            with pytest.raises(KernelFeatureError, match=f"processes {sleeper.pid} still run"):
                net.set_eno_bpf("server", False)
        finally:
            sleeper.kill()
            sleeper.communicate()
        assert not net.eno_bpf_off
        net.set_eno_bpf_hosts(nodes, False)
        with eno_hooks(net):
            middle = run_workload(net, Workload(proto="tcpcrypt", connections=2),
                                  eno_hooks=False)
            counts = {node: stats(net, node)["counts"] for node in nodes}
        last = run_workload(net, Workload(proto="tcpcrypt", connections=2, eno_datapath="bpf"))
        assert net.eno_bpf == attached and not net.eno_bpf_off
        assert {node: (a.pins / "prog").stat().st_ino for node, a in net.eno_bpf.items()} == progs
        cgroups = [a.cgroup for a in attached.values()]
    assert not any(cgroup.exists() for cgroup in cgroups), "detached and removed at teardown"
    for r in first + middle + last:
        assert r["bytes_ok"] and r["eno"] == "negotiated" and \
            r["session_id"] == r["session_id_peer"], r
    # The hooks negotiated the middle connections, so their processes were outside the
    # cgroups whose program was still attached.
    assert [counts[node]["negotiated"] for node in nodes] == [2, 2], counts


def test_malformed_eno_from_a_crafted_peer_never_wedges_the_program() -> None:
    cases = {name: {"syn": syn_options(body)} for name, (body, _) in MALFORMED.items()}
    cases.update({name: {"syn": syn_options(body)} for name, body in VALID.items()})
    cases["whole 40 bytes are ENO"] = {"syn": ("4528a0" + "ab" * 37)}
    with Network(topologies.create("direct")) as net:
        net.set_eno_bpf("server", True)
        server = net.start_helper("server", "server", [
            sys.executable, "-m", "testbed.apps.server", "--proto", "eno-test"], ready="ready")
        seen = run_script(net, "client", RAW_PEER, net.ip("server"), net.ip("client"),
                          json.dumps(cases), timeout=60)
        net.stop_helper(server)
        # and the next real connection still negotiates
        after = run_workload(net, Workload(proto="eno-test", eno_datapath="bpf"))[0]
    assert all(answer is not None for answer in seen.values()), "every SYN was answered"
    for name in MALFORMED:  # §4.4, §4.6: an unusable option gets a SYN-ACK without ENO
        assert not options_of_hex(seen[name]["options"]), name
    for name in [*VALID, "whole 40 bytes are ENO"]:
        assert seen[name]["options"].endswith("45040120"), name  # §4.5: B answers 0x20
    assert after["bytes_ok"] and after["eno"] == "negotiated"


def options_of_hex(options: str) -> bool:
    """Whether a raw options block (hex) carries kind 69."""
    raw, i = bytes.fromhex(options), 0
    while i < len(raw) and raw[i] != 0:
        if raw[i] == 1:
            i += 1
            continue
        if raw[i] == ENO_KIND:
            return True
        i += max(raw[i + 1], 2)
    return False


KILLED = r'''
import sys, time
import topologies
from experiments.common import reordered
from testbed.net.network import Network
net = Network(topologies.create("direct"))
net.start()
net.set_eno_bpf("client", True)
a = net.eno_bpf["client"]
print(net.state.path, a.cgroup, a.pins, flush=True)
time.sleep(60)
'''


def test_a_killed_run_leaves_nothing_after_clean(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # A private state directory (and map-id directory under it): no clean of a parallel
    # test or run can take the dead network before this test's own.
    private = tmp_path / "state"
    monkeypatch.setattr(attach, "MAP_IDS", private / "bpf")
    proc = subprocess.Popen([sys.executable, "-c", KILLED], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "TCPINC_STATE_DIR": str(private)})
    try:
        assert proc.stdout is not None
        state_path, cgroup, pins = (Path(p) for p in proc.stdout.readline().split())
        assert cgroup.is_dir() and (pins / "prog").exists() and ids_file(cgroup).exists()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert state_path.parent == private
    state = NetworkState.load(state_path)
    # The bpf part of clean_state only: killing by namespace inode after the run's hosts
    # died could hit another run's namespace that reused the inode (test_network tests
    # that part).
    assert clean_bpf(state) == 1
    state.remove()
    assert not cgroup.exists() and not pins.exists() and not ids_file(cgroup).exists()


def test_a_path_dropping_eno_syns_falls_back_after_two_retransmissions(tmp_path: Path) -> None:
    """RFC 8547 §4.6 exception on bpf: the kernel program keeps the same ENO option on the SYN
    and its first two retransmissions, then leaves it off; the pure core judges that as the
    syn_retransmission fallback (StreamConfig.syn_retries_with_eno = 2)."""
    pcap = tmp_path / "client.pcap"
    with Network(topologies.create("middlebox")) as net:
        net.run("mb", ["iptables", "-w", "-A", "FORWARD", "-p", "tcp", "--tcp-flags",
                       "SYN,ACK", "SYN", "--tcp-option", str(ENO_KIND), "-j", "DROP"])
        with Capture(net.nodes["client"], net.intf("client"), pcap):
            (record,) = run_workload(net, Workload(proto="eno-test", eno_datapath="bpf"))
    assert record["outcome"] == "plaintext" and record["bytes_ok"], record
    assert (record["fallback_reason"], record["peer_fallback_reason"]) == (
        "syn_retransmission", "no_eno_in_syn")
    (conn,) = eno_conns(pcap)
    syns = [cs.segment for cs in conn.segments if cs.segment.is_syn and not cs.segment.is_ack]
    assert [bool(options_of(s, ENO_KIND)) for s in syns] == [True, True, True, False]
    assert len({bytes(options_of(s, ENO_KIND)[0]) for s in syns[:3]}) == 1, "unchanged (§4.6)"
