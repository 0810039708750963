"""Two hook engines back to back over a fake wire that can strip ENO (the "pair" tier).

Each test plays the kernel: it builds the segments Linux would send (tests/eno_segments.py),
passes them through the sender's engine as outgoing and the receiver's as incoming, and
checks the bytes on the wire and both ends' results against RFC 8547.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from testbed.eno.control import Settings
from testbed.eno.engine import HookEngine
from testbed.eno.tcp_options import find_eno
from testbed.packet import parse_segment
from tests.eno_segments import (
    KERNEL_ACK_OPTIONS,
    KERNEL_SYN_OPTIONS,
    scapy_checksums_ok,
    segment,
    strip_eno,
)

A, B = ("10.0.1.1", 40000), ("10.0.2.1", 5000)
TEST_TEP = Settings(teps=((0x20, None),))
ISN_A, ISN_B = 1000, 5000


@dataclass
class Pair:
    """Host A (client) and host B (server), each with its own engine, and a wire."""

    a: HookEngine = field(default_factory=HookEngine)
    b: HookEngine = field(default_factory=HookEngine)
    now: float = 100.0
    wire: list[bytes] = field(default_factory=list)

    def a_to_b(self, pkt: bytes, strip: bool = False) -> bytes:
        return self._carry(self.a, self.b, pkt, strip)

    def b_to_a(self, pkt: bytes, strip: bool = False) -> bytes:
        return self._carry(self.b, self.a, pkt, strip)

    def _carry(self, sender: HookEngine, receiver: HookEngine, pkt: bytes, strip: bool) -> bytes:
        out = sender.handle(pkt, True, self.now) or pkt
        assert scapy_checksums_ok(out)
        on_wire = strip_eno(out) if strip else out
        self.wire.append(on_wire)
        return receiver.handle(on_wire, False, self.now) or on_wire

    def result_a(self):
        return self.a.result((*A, *B))

    def result_b(self):
        return self.b.result((*B, *A))


def handshake(pair: Pair, strip: str = "", a_settings: Settings = TEST_TEP,
              b_settings: Settings = TEST_TEP, data: bytes = b"hello") -> None:
    """SYN, SYN-ACK, ACK, then A's first data segment, B's ACK, A's second segment."""
    pair.b.listen(B[1], b_settings, owner="server")
    pair.a.announce(A[1], a_settings, pair.now, ttl=10)
    pair.a_to_b(segment(A, B, "S", ISN_A), strip == "syn")
    pair.b_to_a(segment(B, A, "SA", ISN_B, ISN_A + 1), strip == "synack")
    pair.a_to_b(segment(A, B, "A", ISN_A + 1, ISN_B + 1), strip == "ack")
    pair.a_to_b(segment(A, B, "PA", ISN_A + 1, ISN_B + 1, payload=data))
    pair.b_to_a(segment(B, A, "A", ISN_B + 1, ISN_A + 1 + len(data)))
    pair.a_to_b(segment(A, B, "PA", ISN_A + 1 + len(data), ISN_B + 1, payload=data))


def options(pkt: bytes) -> bytes:
    return parse_segment(pkt).options


def test_eno_on_the_wire_exactly_as_rfc8547_says():
    pair = Pair()
    handshake(pair)
    syn, synack, ack, data1, b_ack, data2 = pair.wire
    # §4.1/§4.2: A's SYN: implicit global suboption, one TEP id; B: b = 1 and its answer.
    assert options(syn) == KERNEL_SYN_OPTIONS + bytes.fromhex("45032000")
    assert options(synack) == KERNEL_SYN_OPTIONS + bytes.fromhex("45040120")
    # §4.6: A's third segment carries 45 02, and so does its data until B's non-SYN arrives.
    assert options(ack) == KERNEL_ACK_OPTIONS + bytes.fromhex("45020000")
    assert options(data1) == KERNEL_ACK_OPTIONS + bytes.fromhex("45020000")
    assert options(b_ack) == KERNEL_ACK_OPTIONS
    assert options(data2) == KERNEL_ACK_OPTIONS, "no ENO after a non-SYN segment arrived"
    ra, rb = pair.result_a(), pair.result_b()
    assert (ra.outcome, ra.role, rb.outcome, rb.role) == ("negotiated", "A", "negotiated", "B")
    assert ra.transcript == rb.transcript == "4503204504" "0120"  # §4.8
    assert ra.tep_id == rb.tep_id == ra.tep_byte == 0x20
    assert (ra.peer_b, rb.peer_b) == (True, False)
    assert parse_segment(data2).payload_len == 5


def test_ports_nobody_registered_pass_untouched():
    engine = HookEngine()
    engine.listen(5000, TEST_TEP, owner=1)
    for pkt, outgoing in [
        (segment(A, B, "S", 1), True),  # no announcement for port 40000
        (segment(("10.0.2.1", 6000), A, "S", 1), False),  # A listens on nothing
        (segment(B, A, "SA", 2, 2), False),
        (segment(A, B, "A", 2, 3), True),
    ]:
        assert engine.handle(pkt, outgoing, 0.0) is None
    assert engine.stats()["table_size"] == 0


@pytest.mark.parametrize("strip, reason_a, reason_b", [
    ("syn", "no_eno_in_synack", "no_eno_in_syn"),  # B never saw ENO: plain SYN-ACK (Fig. 10)
    ("synack", "no_eno_in_synack", "no_eno_in_ack"),  # Fig. 11
])
def test_stripping_syn_or_synack_makes_both_ends_fall_back(strip, reason_a, reason_b):
    pair = Pair()
    handshake(pair, strip)
    ra, rb = pair.result_a(), pair.result_b()
    assert (ra.outcome, ra.reason) == ("fallback", reason_a)
    assert (rb.outcome, rb.reason) == ("fallback", reason_b)
    assert not any(find_eno(options(p)) for p in pair.wire[2:]), "no ENO after fallback"


def test_stripping_only_the_first_ack_is_a_split_the_hook_records():
    pair = Pair()
    handshake(pair, "ack")
    ra, rb = pair.result_a(), pair.result_b()
    # §4.6: A sent and received an ACK segment with ENO -> enabled; B's first ACK had none.
    assert ra.outcome == "negotiated"
    assert (rb.outcome, rb.reason) == ("fallback", "no_eno_in_ack")
    assert rb.peer_eno_after_fallback, "A's data still carried 45 02: B's hook saw it"


def test_mandatory_encryption_aborts_on_both_ends():
    pair = Pair()
    required = Settings(teps=((0x20, None),), mandatory=True)
    handshake(pair, "synack", a_settings=required, b_settings=required)
    ra, rb = pair.result_a(), pair.result_b()
    assert (ra.outcome, ra.reason, ra.fallback) == (
        "aborted", "mandatory_encryption", "no_eno_in_synack")
    assert (rb.outcome, rb.fallback) == ("aborted", "no_eno_in_ack")


def test_same_b_bit_falls_back_on_both_ends():
    pair = Pair()
    handshake(pair, a_settings=Settings(teps=((0x20, None),), passive_role=True))
    assert options(pair.wire[0]).endswith(bytes.fromhex("45040120")), "A sent b = 1 (§4.2)"
    assert pair.result_b().reason == "same_b_bit"
    assert pair.result_a().reason == "no_eno_in_synack", "B sent no ENO after falling back"


def test_no_common_tep():
    pair = Pair()
    handshake(pair, a_settings=Settings(teps=((0x21, None),)))
    assert pair.result_b().reason == "no_common_tep"
    assert pair.result_a().reason == "no_eno_in_synack"


@pytest.mark.parametrize("b_bit, expected", [(True, "negotiated"), (False, "fallback")])
def test_simultaneous_open(b_bit, expected):
    """Both ends active (§4.3): only with exactly one b = 1 is there a TEP (Fig. 12)."""
    pair = Pair()
    pair.a.announce(A[1], TEST_TEP, pair.now, 10)
    pair.b.announce(B[1], Settings(teps=((0x20, None),), passive_role=b_bit), pair.now, 10)
    syn_a, syn_b = segment(A, B, "S", ISN_A), segment(B, A, "S", ISN_B)
    out_a = pair.a.handle(syn_a, True, pair.now) or syn_a
    out_b = pair.b.handle(syn_b, True, pair.now) or syn_b
    pair.b.handle(out_a, False, pair.now)  # the SYNs cross
    pair.a.handle(out_b, False, pair.now)
    synack_a = pair.a.handle(segment(A, B, "SA", ISN_A, ISN_B + 1), True, pair.now)
    synack_b = pair.b.handle(segment(B, A, "SA", ISN_B, ISN_A + 1), True, pair.now)
    if b_bit:  # §4.6: each SYN-ACK repeats its SYN's option
        assert find_eno(options(synack_a)) == find_eno(options(out_a))
        assert find_eno(options(synack_b)) == find_eno(options(out_b))
        pair.b.handle(synack_a, False, pair.now)
        pair.a.handle(synack_b, False, pair.now)
    ra, rb = pair.result_a(), pair.result_b()
    assert ra.outcome == rb.outcome == expected
    if b_bit:
        assert (ra.role, rb.role) == ("A", "B") and ra.transcript == rb.transcript
    else:
        assert ra.reason == rb.reason == "same_b_bit"


def test_syn_data_is_discarded_per_rfc8547_4_7():
    engine = HookEngine()
    engine.listen(5000, TEST_TEP, owner=1)
    eno_syn = KERNEL_SYN_OPTIONS + bytes.fromhex("45032000")
    # The SYN TEP (0x20) defines no SYN data: the data goes, the kernel ACKs only the ISN.
    out = engine.handle(segment(A, B, "S", 1, options=eno_syn, payload=b"early"), False, 0.0)
    assert out is not None and parse_segment(out).payload_len == 0 and scapy_checksums_ok(out)
    # ENO off on this port: still discarded (§4.7 "even when ENO has been disabled").
    other = ("10.0.2.1", 6000)
    out = engine.handle(segment(A, other, "S", 1, options=eno_syn, payload=b"x"), False, 0.0)
    assert out is not None and parse_segment(out).payload_len == 0
    # Without ENO, SYN data is not ENO's business.
    plain = segment(A, other, "S", 1, payload=b"x")
    assert engine.handle(plain, False, 0.0) is None


def test_retransmitted_syn_carries_the_same_option():
    pair = Pair()
    pair.a.announce(A[1], TEST_TEP, pair.now, 10)
    first = pair.a.handle(segment(A, B, "S", ISN_A), True, pair.now)
    again = pair.a.handle(segment(A, B, "S", ISN_A), True, pair.now + 1)
    assert first == again is not None


def test_syn_retransmission_without_eno_after_the_limit():
    """A path that drops SYNs bearing ENO: after ``syn_retries`` unanswered retransmissions
    A's next SYN leaves as the kernel built it, A falls back, and B (which never saw a SYN
    with ENO) completes a plain handshake; the late SYN-ACK carries no ENO either."""
    pair = Pair()
    pair.b.listen(B[1], TEST_TEP, owner=1)
    pair.a.announce(A[1], Settings(teps=((0x20, None),), syn_retries=1), pair.now, 10)
    kernel_syn = segment(A, B, "S", ISN_A)
    sent = [pair.a.handle(kernel_syn, True, pair.now + t) for t in (0, 1, 3)]
    assert sent[0] == sent[1] is not None and find_eno(parse_segment(sent[0]).options)
    assert sent[2] is None  # untouched: no ENO
    result = pair.result_a()
    assert result.outcome == "fallback" and result.reason == "syn_retransmission"
    pair.now += 3
    assert pair.b.handle(kernel_syn, False, pair.now) is None
    synack = pair.b_to_a(segment(B, A, "SA", ISN_B, ISN_A + 1))
    assert not find_eno(parse_segment(synack).options)
    pair.a_to_b(segment(A, B, "A", ISN_A + 1, ISN_B + 1))
    assert pair.result_b().outcome == "fallback" and pair.result_b().reason == "no_eno_in_syn"
    assert pair.result_a().reason == "syn_retransmission"


def test_active_opens_are_reported_while_their_syn_is_queued():
    """The ``zero`` action (the hook zeroes reopened conntrack counters with it) comes once per
    followed active connection, with its SYN; passive ends (zeroed before their release by
    the hook), unregistered ports and retransmissions get none."""
    pair = Pair()
    pair.b.listen(B[1], TEST_TEP, owner=1)
    pair.a.announce(A[1], TEST_TEP, pair.now, 10)
    syn = segment(A, B, "S", ISN_A)
    first = pair.a.process(syn, True, pair.now)
    assert first.zero == (*A, *B) and first.payload is not None and not first.read_control
    assert pair.b.process(first.payload, False, pair.now).zero is None
    again = pair.a.process(syn, True, pair.now)  # retransmission: same connection
    assert again.zero is None and again.payload == first.payload
    assert pair.result_b() is not None, "B follows the connection all the same"
    other = ("10.0.1.1", 40001)
    unannounced = pair.a.process(segment(other, B, "S", 1), True, pair.now, control_read=True)
    assert unannounced.zero is None and unannounced.payload is None


def test_a_syn_without_its_announcement_asks_for_the_control_channel_first():
    """Announcements and resumption answers are one-way messages: a SYN that needs one the
    engine does not have yet gets ``read_control`` and changes nothing; asked again after the
    read, it is judged."""
    engine = HookEngine()
    syn = segment(A, B, "S", ISN_A)
    assert engine.process(syn, True, 0.0).read_control
    assert engine.counts["packets"] == 0 and not engine.conns
    engine.announce(A[1], TEST_TEP, 0.0, 10)  # what the read brought
    judged = engine.process(syn, True, 0.0, control_read=True)
    assert judged.payload is not None and not judged.read_control
    assert engine.counts["packets"] == 1 and engine.counts["syn_out"] == 1
    # Passive end: only a listener with pushed answers (RFC 8548 §3.5) waits for the read.
    engine.listen(B[1], TEST_TEP, owner=1)
    incoming = segment(("10.0.9.9", 1234), B, "S", 7, options=bytes.fromhex("45032000"))
    assert not engine.process(incoming, False, 0.0).read_control
    engine.answer(B[1], 0x20, b"k", b"answer", 1e9)
    fresh = segment(("10.0.9.9", 1235), B, "S", 7, options=bytes.fromhex("45032000"))
    assert engine.process(fresh, False, 0.0).read_control
    assert not engine.process(incoming, False, 0.0).read_control  # retransmission: followed
    # A segment that is not a SYN never waits.
    assert not engine.process(segment(A, B, "A", ISN_A + 1, 9), True, 0.0).read_control


def test_final_results_come_out_as_decided_actions():
    pair = Pair()
    pair.b.listen(B[1], TEST_TEP, owner=1)
    pair.a.announce(A[1], TEST_TEP, pair.now, 10)
    syn = pair.a.process(segment(A, B, "S", ISN_A), True, pair.now).payload
    assert syn is not None and pair.b.process(syn, False, pair.now).decided == []
    synack = pair.b.process(segment(B, A, "SA", ISN_B, ISN_A + 1), True, pair.now).payload
    assert synack is not None
    got_synack = pair.a.process(synack, False, pair.now)
    sent_ack = pair.a.process(segment(A, B, "A", ISN_A + 1, ISN_B + 1), True, pair.now)
    assert got_synack.decided + sent_ack.decided == [(*A, *B)]  # A decided once
    ack = sent_ack.payload
    assert ack is not None and pair.b.process(ack, False, pair.now).decided == [(*B, *A)]
    assert pair.result_a().outcome == pair.result_b().outcome == "negotiated"


def test_entries_expire_and_memory_is_bounded():
    engine = HookEngine(expiry=5.0, max_conns=10)
    engine.listen(5000, TEST_TEP, owner=1)
    for port in range(20):
        engine.handle(segment(("10.0.1.1", 30000 + port), B, "S", 1,
                              options=KERNEL_SYN_OPTIONS + bytes.fromhex("45032000")), False, 1.0)
    assert engine.stats()["table_size"] == 10 and engine.counts["evicted"] == 10
    assert engine.expire(5.9) == 0
    assert engine.expire(6.0) == 10 and engine.stats()["table_size"] == 0
    engine.announce(40000, TEST_TEP, now=0.0, ttl=1.0)
    engine.expire(1.5)
    assert not engine.announcements


def test_full_size_segment_is_not_pushed_past_the_mtu():
    pair = Pair()
    pair.b.listen(B[1], TEST_TEP, owner=1)
    pair.a.announce(A[1], TEST_TEP, pair.now, 10)
    pair.a_to_b(segment(A, B, "S", ISN_A))
    pair.b_to_a(segment(B, A, "SA", ISN_B, ISN_A + 1))
    pair.a_to_b(segment(A, B, "A", ISN_A + 1, ISN_B + 1))
    big = segment(A, B, "PA", ISN_A + 1, ISN_B + 1, payload=bytes(1448))
    assert len(big) == 1500 and pair.a.handle(big, True, pair.now) is None


# SYN-form option bodies a scapy peer (or a broken middlebox) might send, and what a passive
# opener must conclude (RFC 8547 §4.4 ill-formed -> ignore and disable; §4.6 rules 1-3).
MALFORMED = {
    "length byte as the last byte": ("4503 80", "malformed_option"),
    "length byte data overruns the option": ("4505 85a0 2020", "malformed_option"),
    "length byte then a global suboption": ("4505 8001 2020", "malformed_option"),
    "length byte then a v=0 TEP id": ("4505 8020 2020", "malformed_option"),
    "length byte then a length byte": ("4506 8080 a020", "malformed_option"),
    "vacuous: global suboption only": ("4503 00", "vacuous_option"),
    "vacuous: empty option": ("4502", "vacuous_option"),
    "vacuous: two global suboptions": ("4504 0001", "vacuous_option"),
    "same b bit as a passive opener": ("4504 0120", "same_b_bit"),
    "unknown TEP ids only": ("4504 7e7f", "no_common_tep"),
    # Not an ENO option at all: a TCP option whose length is impossible ends the block.
    "option length 1": ("4501", "no_eno_in_syn"),
    "option length overruns the header": ("45ff 20", "no_eno_in_syn"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_syn_option_falls_back_and_never_raises(name):
    engine = HookEngine()
    engine.listen(5000, TEST_TEP, owner=1)
    body, reason = MALFORMED[name]
    opts = KERNEL_SYN_OPTIONS + bytes.fromhex(body.replace(" ", ""))
    opts += bytes(-len(opts) % 4)
    engine.handle(segment(A, B, "S", 1, options=opts), False, 0.0)
    synack = engine.handle(segment(B, A, "SA", 9, 2), True, 0.0)
    result = engine.result((*B, *A))
    assert (result.outcome, result.reason) == ("fallback", reason)
    assert synack is None, "a passive opener that fell back sends no ENO (§4.6)"


def test_v1_tep_data_running_to_the_end_is_valid():
    """§4.4: TEP data without a length byte runs to the end of the option (so it is last)."""
    engine = HookEngine()
    engine.listen(5000, TEST_TEP, owner=1)
    opts = KERNEL_SYN_OPTIONS + bytes.fromhex("4507a020212223") + b"\x00"
    engine.handle(segment(A, B, "S", 1, options=opts), False, 0.0)
    synack = engine.handle(segment(B, A, "SA", 9, 2), True, 0.0)
    assert synack is not None and options(synack).endswith(bytes.fromhex("45040120"))
    first_ack = KERNEL_ACK_OPTIONS + bytes.fromhex("45020000")
    engine.handle(segment(A, B, "A", 2, 10, options=first_ack), False, 0.0)
    result = engine.result((*B, *A))
    assert result.outcome == "negotiated" and result.peer_data == "20212223"


def test_duplicate_eno_options_count_as_none():
    engine = HookEngine()
    engine.listen(5000, TEST_TEP, owner=1)
    opts = KERNEL_SYN_OPTIONS + bytes.fromhex("45032045 03200000")
    engine.handle(segment(A, B, "S", 1, options=opts), False, 0.0)
    assert engine.result((*B, *A)).reason == "multiple_eno"  # §4.1


def test_syn_with_the_40_byte_option_space_full():
    engine = HookEngine()
    engine.listen(5000, TEST_TEP, owner=1)
    opts = KERNEL_SYN_OPTIONS + bytes.fromhex("4503 20") + b"\x01" * 17  # 40 bytes
    engine.handle(segment(A, B, "S", 1, options=opts), False, 0.0)
    out = engine.handle(segment(B, A, "SA", 9, 2), True, 0.0)
    assert engine.result((*B, *A)).state == "synack_sent"
    assert out is not None and options(out).endswith(bytes.fromhex("45040120"))


def test_our_syn_without_room_for_eno_falls_back():
    engine = HookEngine()
    big = Settings(teps=((0x21, bytes(21)),))  # a 21-byte resumption-like offer
    engine.announce(A[1], big, 0.0, 10)
    assert engine.handle(segment(A, B, "S", 1), True, 0.0) is None
    assert engine.result((*A, *B)).reason == "no_option_space"


@pytest.mark.parametrize("seed", range(25))
def test_fuzzed_segments_never_raise(seed):
    rng = random.Random(seed)
    engine = HookEngine()
    engine.listen(5000, TEST_TEP, owner=1)
    engine.announce(40000, TEST_TEP, 0.0, 10)
    for i in range(200):
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 39)))
        opts = bytes((69, rng.randrange(256))) + body if rng.random() < 0.7 else body
        opts = (opts + bytes(-len(opts) % 4))[:40]
        flags = rng.choice(["S", "SA", "A", "PA", "R", "F"])
        pkt = segment(A, B, flags, rng.randrange(2**32), rng.randrange(2**32), options=opts,
                      payload=b"x" * rng.randrange(0, 3))
        if rng.random() < 0.2:
            cut = rng.randrange(len(pkt))
            pkt = pkt[:cut] + bytes((rng.randrange(256),)) + pkt[cut + 1 :]
        engine.handle(pkt, rng.random() < 0.5, float(i))
    assert engine.counts["internal_errors"] == 0


def test_a_plain_connection_reusing_a_4_tuple_does_not_inherit_eno_duties():
    pair = Pair()
    pair.a.announce(A[1], TEST_TEP, pair.now, 10)
    pair.b.listen(B[1], TEST_TEP, owner=1)
    pair.a_to_b(segment(A, B, "S", ISN_A))
    pair.b_to_a(segment(B, A, "SA", ISN_B, ISN_A + 1))  # A now owes ENO on its ACK...
    pair.b.unlisten(B[1], owner=1)
    # ...but that attempt died; a plain connection (no announcement) reuses the 4-tuple.
    assert pair.a.handle(segment(A, B, "S", 7), True, pair.now) is None
    assert pair.b.handle(segment(A, B, "S", 7), False, pair.now) is None
    assert pair.a.handle(segment(A, B, "A", 8, 99), True, pair.now) is None
    assert pair.result_a() is None and pair.result_b() is None
