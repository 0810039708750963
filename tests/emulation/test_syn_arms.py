"""The SYN-data arms end to end (RFC 8547 §4.7; testbed/synstream.py, testbed/apps/proto_syn.py).

On the wire: the SYN carries the SYN TEP's first flight (tcpcrypt Init1, a TLS ClientHello)
with ENO naming that TEP last and no TFO option; the SYN-ACK acknowledges it; the round trips
counted from the capture equal the theory rows. Through boxes: a stripped payload is resent
behind A's ACK (still encrypted); a SYN-ACK without ENO after SYN
data is a §4.7 abort, after which the opportunistic client reconnects without ENO; an ACK
without ENO makes the server, which already used the SYN data, reset the connection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import middleboxes
import topologies
from experiments.theory import THEORY_RTTS
from testbed.net.flows import connections
from testbed.net.network import Network
from testbed.net.pcap import options_of, read_segments
from testbed.teps.tcpcrypt.constants import INIT1_MAGIC
from testbed.workload import Workload, run_workload
from tests.helpers import counted_rounds, theory_rounds
from topologies import PathShape

ENO_KIND, TFO_KIND = 69, 34
SYN_TEP = {"tcpcrypt-syn": 0x23, "tls-syn": 0x30, "tls-0rtt-syn": 0x30,
           "tcpcrypt-resume-syn": 0x23}
INIT1 = INIT1_MAGIC.to_bytes(4, "big")
FIRST_BYTES = {"tcpcrypt-syn": INIT1, "tls-syn": b"\x16\x03\x01", "tls-0rtt-syn": b"\x16\x03\x01",
               "tcpcrypt-resume-syn": INIT1}
RESUMES = ("tls-0rtt-syn", "tcpcrypt-resume-syn")  # the first connection seeds the session


def _syns(pcap: Path) -> list[tuple[Any, Any]]:
    """(SYN, SYN-ACK) of each captured connection to the server port, in order."""
    out = []
    for conn in connections(read_segments(pcap)).values():
        segs = [cs.segment for cs in conn.segments]
        syn = next(s for s in segs if s.is_syn and not s.is_ack)
        synack = next(s for s in segs if s.is_syn and s.is_ack)
        out.append((syn, synack))
    return out




@pytest.mark.parametrize("arm", sorted(SYN_TEP))
def test_first_flight_rides_on_the_syn_and_round_trips_equal_theory(
        arm: str, tmp_path: Path) -> None:
    pcap = tmp_path / f"{arm}.pcap"
    # 100 ms RTT: the server's answer counts as following the SYN (not A's ACK) only if it
    # leaves within one RTT of the SYN's arrival, and host time on a loaded 2-core machine
    # reaches tens of ms.
    with Network(topologies.create("direct", path=PathShape(rtt_ms=100))) as net:
        before = net.sysctls["client"]["net.ipv4.tcp_fastopen"]
        records = run_workload(net, Workload(proto=arm, connections=3,
                                             eno_datapath="nfqueue"), pcap=pcap)
        assert net.sysctls["client"]["net.ipv4.tcp_fastopen"] == before  # put back
    for r in records:
        assert (r["outcome"], r["error"], r["bytes_ok"]) == ("encrypted", None, True), r
        assert r["session_id"] == r["session_id_peer"] and r["syn_data"] == "acked", r
        assert "beyond" in r["variant_label"] and r["eno_datapath"] == "nfqueue"
        assert r["syn_sysctls"]["client"]["net.ipv4.tcp_fastopen"] == str(0x7)
        assert r["syn_sysctls"]["server"]["net.ipv4.tcp_fastopen"] == str(0x203)
    if arm in RESUMES:
        assert [r["early_data_accepted"] for r in records] == [None, True, True]
    syns = _syns(pcap)
    assert len(syns) == 3
    for index, (syn, synack) in enumerate(syns):
        assert options_of(syn, TFO_KIND) == []
        assert synack.ack == (syn.seq + 1 + syn.payload_len) & 0xFFFFFFFF  # data accepted
        if arm == "tcpcrypt-resume-syn" and index:
            # The request's frame, not Init1; the offer (v = 1, half and nonce_a) and an
            # answer with the other half and no nonce (proto_syn.SynResumeProvider).
            assert syn.payload_len == 12 + 20 and not syn.payload.startswith(INIT1)
            (offer,) = options_of(syn, ENO_KIND)
            (answer,) = options_of(synack, ENO_KIND)
            assert offer[0] == 0xA3 and len(offer) == 1 + 9 + 8
            assert answer[:2] == bytes([0x01, 0xA3]) and len(answer) == 2 + 9
            continue
        assert syn.payload.startswith(FIRST_BYTES[arm])
        assert options_of(syn, ENO_KIND) == [bytes([SYN_TEP[arm]])]  # the SYN TEP, alone
        assert options_of(synack, ENO_KIND) == [bytes([0x01, SYN_TEP[arm]])]
    # As the analyses do, count the connections after the first: it pays the processes'
    # first-use costs, and for resumption arms it seeds the session (its request was handed
    # to the TEP at connect, so its send count says nothing).
    measured = records[1:]
    counted = counted_rounds(pcap, measured)
    assert counted == [theory_rounds(arm)] * len(measured), counted
    assert THEORY_RTTS[arm][1] == THEORY_RTTS[arm][0] + 1


def _through(box: str, arm: str, tmp_path: Path, connections: int = 1) -> list[dict[str, Any]]:
    pcap = tmp_path / f"{arm}-{box}.pcap"
    with Network(topologies.create("middlebox", path=PathShape(rtt_ms=20))) as net:
        mb = middleboxes.create(box)
        mb.install(net, "mb")
        try:
            records = run_workload(net, Workload(proto=arm, connections=connections,
                                                 eno_datapath="nfqueue", timeout_s=5),
                                   pcap=pcap)
        finally:
            mb.remove()
    for r in records:
        r["counted"] = counted_rounds(pcap, [r])[0] if r["bytes_ok"] else None
    return records


def test_stripped_syn_data_is_sent_again_behind_the_ack(tmp_path: Path) -> None:
    (r,) = _through("strip-syn-data", "tcpcrypt-syn", tmp_path)
    assert (r["outcome"], r["syn_data"], r["bytes_ok"]) == ("encrypted", "not_acked", True), r
    # The SYN-ACK acknowledged only the ISN; A's kernel sent Init1 again right behind its ACK
    # (not a round trip later, as fresh tcpcrypt's Init1 goes), so Init2 comes half a round
    # trip late and the whole-round counts stay those of the arm.
    assert r["counted"] == theory_rounds("tcpcrypt-syn")


def test_synack_without_eno_after_syn_data_aborts_then_reconnects_plain(
        tmp_path: Path) -> None:
    (r,) = _through("strip-eno-synack", "tls-syn", tmp_path)
    # B's kernel acknowledged the SYN data, and the SYN-ACK arrived without ENO: §4.7's first
    # abort (acknowledged, SYN TEP not negotiated); opportunistic: plain TCP after it.
    assert (r["outcome"], r["fallback_reason"], r["bytes_ok"]) == (
        "plaintext", "syn_data_misinterpreted", True), r
    assert r["tep"] is None and "variant_label" not in r


def test_ack_without_eno_after_used_syn_data_resets(tmp_path: Path) -> None:
    (r,) = _through("strip-eno-ack", "tcpcrypt-syn", tmp_path)
    # B answered Init2 at once, then its first ACK segment lacked ENO (§4.6 rule 1): B resets
    # instead of taking the SYN data or the TEP bytes after it for plaintext.
    assert r["outcome"] == "failed" and r["bytes_ok"] is False, r
    assert r["peer_outcome"] == "failed" and "confirm" in (r["peer_error"] or ""), r
