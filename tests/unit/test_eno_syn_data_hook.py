"""SYN data through two hook engines (RFC 8547 §4.7), switched on by the control API.

The pair tier of tests/unit/test_eno_engine.py, with the SYN carrying the first bytes as a
no-cookie TFO client sends them: every §4.7 rule seen from the hooks, on the bytes that
reach each kernel.
"""

from __future__ import annotations

from testbed.eno.control import Settings
from testbed.eno.engine import HookEngine
from testbed.eno.tcp_options import find_eno
from testbed.packet import parse_segment
from tests.eno_segments import scapy_checksums_ok, segment
from tests.unit.test_eno_engine import ISN_A, ISN_B, TEST_TEP, A, B, Pair

SYN_TEP = Settings(teps=((0x20, None),), syn_data=(0x20,))
FIRST = b"Init1 or ClientHello"


def payload(pkt: bytes) -> bytes:
    seg = parse_segment(pkt)
    return pkt[seg.ihl + seg.doff:]


def has_eno(pkt: bytes) -> bool:
    return bool(find_eno(parse_segment(pkt).options))


def open_with_syn_data(pair: Pair, a: Settings, b: Settings | None, *, acked: bool,
                       strip_synack: bool = False) -> tuple[bytes, bytes]:
    """A's SYN with data, B's SYN-ACK (acknowledging the data if ``acked``), A's ACK.
    Returns the SYN as B's kernel gets it and the SYN-ACK as A's kernel gets it."""
    if b is not None:
        pair.b.listen(B[1], b, owner="server")
    pair.a.announce(A[1], a, pair.now, ttl=10)
    syn = pair.a_to_b(segment(A, B, "S", ISN_A, payload=FIRST))
    ack_no = ISN_A + 1 + (len(FIRST) if acked else 0)
    synack = pair.b_to_a(segment(B, A, "SA", ISN_B, ack_no), strip_synack)
    pair.a_to_b(segment(A, B, "A", ack_no, ISN_B + 1))
    return syn, synack


def test_syn_data_is_off_by_default_so_the_syn_goes_without_eno() -> None:
    pair = Pair()
    syn, _ = open_with_syn_data(pair, TEST_TEP, TEST_TEP, acked=True)
    assert not has_eno(pair.wire[0])
    assert payload(syn) == FIRST  # plain TFO: not ENO's business
    assert (pair.result_a().outcome, pair.result_a().reason) == ("fallback", "syn_data_conflict")


def test_syn_data_kept_when_the_syn_tep_is_negotiated() -> None:
    pair = Pair()
    syn, _ = open_with_syn_data(pair, SYN_TEP, SYN_TEP, acked=True)
    assert payload(pair.wire[0]) == FIRST and has_eno(pair.wire[0])
    assert payload(syn) == FIRST and scapy_checksums_ok(syn)
    assert pair.result_a().outcome == pair.result_b().outcome == "negotiated"
    assert pair.b.stats()["counts"].get("syn_data_discarded", 0) == 0
    assert pair.result_b().syn_data == "accepted" and pair.result_a().syn_data == ""


def test_syn_data_discarded_when_the_peer_does_not_define_it() -> None:
    pair = Pair()
    syn, _ = open_with_syn_data(pair, SYN_TEP, TEST_TEP, acked=False)
    assert payload(syn) == b"" and has_eno(syn)  # B's kernel ACKs only the ISN
    assert scapy_checksums_ok(syn)
    assert pair.b.stats()["counts"]["syn_data_discarded"] == 1
    assert pair.result_b().syn_data == "discarded:no_syn_data_defined"  # the record says why
    # The data was not acknowledged, so A is fine: TCP sends it again after the handshake.
    assert pair.result_a().outcome == pair.result_b().outcome == "negotiated"


def test_synack_without_eno_after_syn_data_aborts() -> None:
    pair = Pair()
    open_with_syn_data(pair, SYN_TEP, SYN_TEP, acked=False, strip_synack=True)
    result = pair.result_a()
    assert (result.outcome, result.reason, result.fallback) == (
        "aborted", "syn_data_unconfirmed", "no_eno_in_synack")


def test_acknowledged_syn_data_without_the_syn_tep_aborts() -> None:
    pair = Pair()
    pair.b = HookEngine()  # B runs no ENO for the port, and its TFO kernel takes the data
    _, synack = open_with_syn_data(pair, SYN_TEP, None, acked=True)
    assert not has_eno(synack)
    result = pair.result_a()
    assert (result.outcome, result.reason) == ("aborted", "syn_data_misinterpreted")


def test_accepted_syn_data_gives_a_tentative_result_the_outcome_then_confirms() -> None:
    """B may start the SYN TEP at the SYN (testbed/synstream.py): the result names what the
    SYN exchange decided, marked tentative, until A's first ACK segment decides (§4.6)."""
    pair = Pair()
    pair.b.listen(B[1], SYN_TEP, owner="server")
    pair.a.announce(A[1], SYN_TEP, pair.now, ttl=10)
    pair.a_to_b(segment(A, B, "S", ISN_A, payload=FIRST))
    early = pair.result_b()
    assert (early.outcome, early.tentative, early.syn_data) == (None, True, "accepted")
    assert (early.role, early.tep_id) == ("B", 0x20) and early.transcript
    pair.b_to_a(segment(B, A, "SA", ISN_B, ISN_A + 1 + len(FIRST)))
    pair.a_to_b(segment(A, B, "A", ISN_A + 1 + len(FIRST), ISN_B + 1))
    final = pair.result_b()
    assert (final.outcome, final.tentative) == ("negotiated", False)
    assert (final.tep_id, final.transcript) == (early.tep_id, early.transcript)


def test_no_tentative_result_without_accepted_syn_data() -> None:
    pair = Pair()
    pair.b.listen(B[1], TEST_TEP, owner="server")  # B defines no SYN data: discarded
    pair.a.announce(A[1], SYN_TEP, pair.now, ttl=10)
    pair.a_to_b(segment(A, B, "S", ISN_A, payload=FIRST))
    early = pair.result_b()
    assert (early.outcome, early.tentative, early.tep_id, early.transcript) == (
        None, False, None, "")


def test_a_first_ack_without_eno_turns_the_tentative_result_into_a_fallback() -> None:
    pair = Pair()
    pair.b.listen(B[1], SYN_TEP, owner="server")
    pair.a.announce(A[1], SYN_TEP, pair.now, ttl=10)
    pair.a_to_b(segment(A, B, "S", ISN_A, payload=FIRST))
    assert pair.result_b().tentative
    pair.b_to_a(segment(B, A, "SA", ISN_B, ISN_A + 1 + len(FIRST)))
    pair.a_to_b(segment(A, B, "A", ISN_A + 1 + len(FIRST), ISN_B + 1), strip=True)
    final = pair.result_b()
    assert (final.outcome, final.reason, final.tentative) == ("fallback", "no_eno_in_ack", False)
