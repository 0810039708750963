"""Passive tcpcrypt resumption through the ENO hook (RFC 8548 §3.5), on raw segments.

Two hook engines play host A (client) and host B (server) as in test_eno_engine.py; B's
application has pushed an answer for the identifier half A will send. Checked: the answer is
used once, expires, fits the 40-byte option space beside Linux's options (NOP padding dropped
only when needed), a mismatching answer disables ENO at A, and A's offer is trimmed to fit.
"""

from __future__ import annotations

from typing import Any

import pytest

from testbed.eno.control import ControlError, Settings
from testbed.eno.engine import HookEngine
from testbed.eno.hook import ControlServer
from testbed.eno.tcp_options import find_eno
from testbed.packet import parse_segment
from tests.eno_segments import KERNEL_SYN_OPTIONS, scapy_checksums_ok, segment

A, B = ("10.0.1.1", 40000), ("10.0.2.1", 5000)
X25519 = 0x23
HALF_A, HALF_B = bytes(range(1, 10)), bytes(range(11, 20))  # resume[i]{0..8}, {9..17}
NONCE_A, NONCE_B = b"\xaa" * 8, b"\xbb" * 8
OFFER = HALF_A + NONCE_A
ANSWER = HALF_B + NONCE_B
LISTEN = Settings(teps=((X25519, None),))
RESUMING = Settings(teps=((X25519, OFFER),), expect=((X25519, HALF_B),))


def eno(packet: bytes) -> bytes:
    found = find_eno(parse_segment(packet).options)
    assert len(found) == 1
    return found[0].encode()


class Hosts:
    """Engine ``a`` (client) and ``b`` (server), B listening on 5000."""

    def __init__(self) -> None:
        self.a, self.b = HookEngine(), HookEngine()
        self.b.listen(B[1], LISTEN, owner="server")
        self.now = 10.0

    def handshake(self, a_settings: Settings, port: int = A[1]) -> dict[str, bytes]:
        """SYN, SYN-ACK and A's third segment through both engines; what went on the wire."""
        a_addr, wire = (A[0], port), {}
        self.a.announce(port, a_settings, self.now, ttl=10)
        for name, sender, receiver, pkt in (
            ("syn", self.a, self.b, segment(a_addr, B, "S", 1000)),
            ("synack", self.b, self.a, segment(B, a_addr, "SA", 5000, 1001)),
            ("ack", self.a, self.b, segment(a_addr, B, "A", 1001, 5001)),
        ):
            out = sender.handle(pkt, True, self.now) or pkt
            assert scapy_checksums_ok(out)
            receiver.handle(out, False, self.now)
            wire[name] = out
        return wire

    def results(self, port: int = A[1]) -> tuple[Any, Any]:
        return self.a.result((A[0], port, *B)), self.b.result((*B, A[0], port))


def test_pushed_answer_resumes_and_fits_beside_linux_options() -> None:
    hosts = Hosts()
    hosts.b.answer(B[1], X25519, HALF_A, ANSWER, deadline=hosts.now + 60)
    wire = hosts.handshake(RESUMING)
    # A: 45 14 a3 | half | nonce = 20 bytes, beside the kernel's 20: no rewrite of those.
    syn = parse_segment(wire["syn"])
    assert eno(wire["syn"]) == bytes.fromhex("4514a3") + OFFER
    assert syn.options[: len(KERNEL_SYN_OPTIONS)] == KERNEL_SYN_OPTIONS
    # B: 45 15 01 a3 | half | nonce = 21 bytes: the kernel's NOP goes, 19 + 21 = 40 bytes.
    synack = parse_segment(wire["synack"])
    assert eno(wire["synack"]) == bytes.fromhex("451501a3") + ANSWER
    assert synack.options == KERNEL_SYN_OPTIONS.replace(b"\x01\x03\x03", b"\x03\x03") + eno(
        wire["synack"])
    assert len(synack.options) == 40 and hosts.b.counts["nop_padding_dropped"] == 1
    ra, rb = hosts.results()
    assert ra.outcome == rb.outcome == "negotiated"
    assert ra.tep_byte == rb.tep_byte == 0x80 | X25519  # §3.4: v = 1 in the session ID
    assert bytes.fromhex(ra.peer_data) == ANSWER and bytes.fromhex(rb.local_data) == ANSWER
    assert bytes.fromhex(rb.peer_data) == OFFER and bytes.fromhex(ra.local_data) == OFFER
    assert hosts.b.counts["answers_used"] == 1


def test_an_answer_is_used_once_then_the_offer_gets_a_fresh_exchange() -> None:
    hosts = Hosts()
    hosts.b.answer(B[1], X25519, HALF_A, ANSWER, deadline=hosts.now + 60)
    hosts.handshake(RESUMING, port=40001)
    wire = hosts.handshake(RESUMING, port=40002)  # a replayed identifier (§3.5: single use)
    assert eno(wire["synack"]) == bytes.fromhex("45040123")  # v = 0: fresh key exchange
    ra, rb = hosts.results(40002)
    assert ra.outcome == rb.outcome == "negotiated" and ra.tep_byte == X25519
    assert ra.peer_data == "" and hosts.b.counts["answers_unknown"] == 1


def test_an_expired_answer_is_not_used() -> None:
    hosts = Hosts()
    hosts.b.answer(B[1], X25519, HALF_A, ANSWER, deadline=hosts.now + 1)
    hosts.now += 2
    wire = hosts.handshake(RESUMING)
    assert eno(wire["synack"]) == bytes.fromhex("45040123")
    assert hosts.b.counts["answers_expired"] == 1


def test_expiry_tick_drops_answers_and_unanswer_withdraws() -> None:
    engine = HookEngine()
    engine.listen(B[1], LISTEN, owner=1)
    engine.answer(B[1], X25519, HALF_A, ANSWER, deadline=5.0)
    engine.answer(B[1], X25519, HALF_B, ANSWER, deadline=50.0)
    engine.expire(10.0)
    assert engine.counts["answers_expired"] == 1
    assert engine.unanswer(B[1], X25519, HALF_B) and not engine.unanswer(B[1], X25519, HALF_B)
    with pytest.raises(ValueError):
        engine.answer(4999, X25519, HALF_A, ANSWER, deadline=5.0)  # no listener there


def test_a_mismatching_answer_disables_eno_at_the_active_opener() -> None:
    """§3.5: A ignores a resumption suboption with the wrong half; it was the only one, so
    ENO is off: A's third segment has no ENO and B falls back too (RFC 8547 §4.6)."""
    hosts = Hosts()
    hosts.b.answer(B[1], X25519, HALF_A, bytes(9) + NONCE_B, deadline=hosts.now + 60)
    wire = hosts.handshake(RESUMING)
    assert not find_eno(parse_segment(wire["ack"]).options)
    ra, rb = hosts.results()
    assert (ra.outcome, ra.reason) == ("fallback", "no_common_tep")
    assert (rb.outcome, rb.reason) == ("fallback", "no_eno_in_ack")


def test_a_fresh_answer_to_a_resumption_offer_is_valid() -> None:
    hosts = Hosts()  # B knows no identifier: §3.5 fresh key exchange, same TEP
    hosts.handshake(RESUMING)
    ra, rb = hosts.results()
    assert ra.outcome == rb.outcome == "negotiated" and ra.tep_byte == X25519


def test_the_active_offer_sheds_optional_teps_until_it_fits() -> None:
    """RFC 8548 §3.2: other TEPs beside a resumption offer are optional. 40 - 19 = 21 bytes:
    45 15 24 a3 <17> keeps X448 and leaves P-256 and P-521 out."""
    hosts = Hosts()
    offer = Settings(teps=((X25519, OFFER), (0x24, None), (0x21, None), (0x22, None)))
    wire = hosts.handshake(offer)
    assert eno(wire["syn"]) == bytes.fromhex("451524a3") + OFFER
    assert hosts.a.counts["offers_trimmed"] == 2
    assert len(parse_segment(wire["syn"]).options) == 40


def test_small_options_keep_the_kernel_block_byte_for_byte() -> None:
    hosts = Hosts()
    wire = hosts.handshake(Settings(teps=((X25519, None), (0x24, None))))
    for name in ("syn", "synack"):
        options = parse_segment(wire[name]).options
        assert options.startswith(KERNEL_SYN_OPTIONS)
    assert hosts.b.counts["nop_padding_dropped"] == 0


def test_settings_expect_round_trip_and_validation() -> None:
    assert Settings.from_json(RESUMING.to_json()) == RESUMING
    assert "expect" not in LISTEN.to_json()
    for bad in ({"teps": [[0x23, None]], "expect": [[0x24, "00"]]},  # TEP not offered
                {"teps": [[0x23, None]], "expect": [[0x23, "zz"]]},
                {"teps": [[0x23, None]], "expect": [[0x23, "00"], [0x23, "01"]]},
                {"teps": [[0x23, None]], "expect": [0x23]}):
        with pytest.raises(ControlError):
            Settings.from_json(bad)


def test_control_ops_answer_and_unanswer() -> None:
    engine = HookEngine()
    server = ControlServer(engine, name=f"tcpinc-test-{id(engine)}")
    try:
        owner = object()
        engine.listen(B[1], LISTEN, owner=owner)
        message = {"op": "answer", "port": B[1], "tep_id": X25519, "key": HALF_A.hex(),
                   "data": ANSWER.hex(), "ttl": 30}
        assert server._dispatch(owner, message, 100.0) == {"ok": True}  # type: ignore[arg-type]
        assert engine.listeners[B[1]].answers[(X25519, HALF_A)].deadline == 130.0
        assert server._dispatch(owner, {**message, "noreply": True}, 1.0) is None  # type: ignore[arg-type]
        undo = {"op": "unanswer", "port": B[1], "tep_id": X25519, "key": HALF_A.hex()}
        assert server._dispatch(owner, undo, 1.0) == {"ok": True, "withdrawn": True}  # type: ignore[arg-type]
        with pytest.raises(ControlError):
            server._dispatch(owner, {**message, "key": "xyz"}, 1.0)  # type: ignore[arg-type]
    finally:
        server.close()
