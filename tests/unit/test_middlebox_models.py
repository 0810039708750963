"""Packet models on crafted packets: isn-rewrite, tamper, add-option, resegment, helpers."""

from __future__ import annotations

from typing import Any

import pytest
from scapy.layers.inet import IP, TCP

from middleboxes import packet as p
from middleboxes.nfq import Runner
from middleboxes.pktmodel import (
    ACCEPT,
    DROP,
    AddOption,
    CrossSyns,
    Decision,
    FlowTable,
    IsnRewrite,
    StreamCursor,
    Tamper,
    create_model,
)
from middleboxes.resegment import Resegment, merge_segments, split_segment

CLIENT, SERVER = ("10.0.1.1", 40000), ("10.0.2.2", 5000)
TS = ("Timestamp", (111, 222))


def seg(flags: str, seq: int = 0, ack: int = 0, payload: bytes = b"", c2s: bool = True,
        options: list[Any] | None = None, ip_id: int = 1) -> bytes:
    src, dst = (CLIENT, SERVER) if c2s else (SERVER, CLIENT)
    tcp = TCP(sport=src[1], dport=dst[1], seq=seq, ack=ack, flags=flags,
              options=options if options is not None else [("NOP", None), ("NOP", None), TS])
    pkt = IP(src=src[0], dst=dst[0], id=ip_id) / tcp
    return bytes(pkt / payload) if payload else bytes(pkt)


def out(decision: Decision, original: bytes) -> bytes:
    assert decision.accept
    return decision.replacement if decision.replacement is not None else original


def valid(raw: bytes) -> IP:
    """Parse with scapy and check both checksums against scapy's own computation."""
    got = IP(raw)
    fresh = IP(raw)
    del fresh.chksum
    del fresh[TCP].chksum
    fresh = IP(bytes(fresh))
    assert (got.chksum, got[TCP].chksum) == (fresh.chksum, fresh[TCP].chksum)
    return got


# -- isn-rewrite --------------------------------------------------------------------------


def test_isn_rewrite_shifts_client_seq_and_translates_acks_and_sack() -> None:
    box = IsnRewrite(offset=1000)
    eno_syn = seg("S", seq=5000, options=[("MSS", 1460), (69, b"\x20"), TS])
    syn = out(box.process(eno_syn, 0), eno_syn)
    assert valid(syn)[TCP].seq == 6000
    assert bytes(IP(syn)[TCP])[20:] == bytes(IP(eno_syn)[TCP])[20:]  # options byte for byte
    synack = seg("SA", seq=9000, ack=6001, c2s=False)
    assert valid(out(box.process(synack, 0), synack))[TCP].ack == 5001
    data = seg("PA", seq=5001, ack=9001, payload=b"request")
    moved = valid(out(box.process(data, 0), data))
    assert (moved[TCP].seq, moved[TCP].ack) == (6001, 9001)
    sack = seg("A", seq=9001, ack=6008, c2s=False,
               options=[("NOP", None), ("NOP", None), ("SAck", (7000, 7100))])
    back = valid(out(box.process(sack, 0), sack))
    assert back[TCP].ack == 5008 and dict(back[TCP].options)["SAck"] == (6000, 6100)
    assert box.counters.changed == 4


def test_isn_rewrite_random_offsets_are_seeded_and_per_flow() -> None:
    def first_seq(seed: int, sport: int) -> int:
        raw = bytes(IP(src="10.0.1.1", dst="10.0.2.2") / TCP(sport=sport, dport=5000,
                                                             seq=0, flags="S"))
        box = IsnRewrite(seed=seed)
        return int(IP(out(box.process(raw, 0), raw))[TCP].seq)

    assert first_seq(1, 40000) == first_seq(1, 40000) != 0
    assert first_seq(1, 40000) != first_seq(2, 40000)


def test_isn_rewrite_keeps_the_offset_of_a_retransmitted_syn() -> None:
    box = IsnRewrite(seed=9)
    syn = seg("S", seq=77)
    first = IP(out(box.process(syn, 0), syn))[TCP].seq
    assert IP(out(box.process(syn, 1), syn))[TCP].seq == first
    reused = seg("S", seq=78)  # the same 4-tuple opened again: a new offset
    assert IP(out(box.process(reused, 2), reused))[TCP].seq != first + 1


def test_isn_rewrite_leaves_flows_it_did_not_see_open() -> None:
    box = IsnRewrite(offset=5)
    data = seg("PA", seq=1, ack=1, payload=b"x")
    assert box.process(data, 0) == ACCEPT
    assert box.process(b"not a packet", 0) == ACCEPT


def test_isn_rewrite_wraps_sequence_space() -> None:
    box = IsnRewrite(offset=10)
    syn = seg("S", seq=0xFFFFFFFA)
    assert IP(out(box.process(syn, 0), syn))[TCP].seq == 4
    ack = seg("A", seq=1, ack=5, c2s=False)
    assert IP(out(box.process(ack, 0), ack))[TCP].ack == 0xFFFFFFFB


# -- tamper -------------------------------------------------------------------------------


def test_tamper_flips_exactly_one_payload_bit_with_valid_checksum() -> None:
    box = Tamper(rate=1.0, seed=3)
    data = seg("PA", seq=1, ack=1, payload=b"\x00" * 64)
    changed = valid(out(box.process(data, 0), data))
    body = bytes(changed[TCP].payload)
    assert sum(bin(b).count("1") for b in body) == 1
    assert bytes(changed[TCP])[:12] == bytes(IP(data)[TCP])[:12]  # ports, seq, ack kept
    assert box.counters.changed == 1


def test_tamper_spares_empty_segments_and_rate_zero() -> None:
    box = Tamper(rate=1.0)
    ack = seg("A", seq=1, ack=1)
    assert box.process(ack, 0) == ACCEPT
    quiet = Tamper(rate=0.0)
    data = seg("PA", seq=1, ack=1, payload=b"abc")
    assert quiet.process(data, 0) == ACCEPT


def test_tamper_direction_follows_the_syn_sender() -> None:
    box = Tamper(rate=1.0, direction="s2c")
    box.process(seg("S", seq=0), 0)
    assert box.process(seg("PA", seq=1, ack=1, payload=b"req"), 0) == ACCEPT
    reply = seg("PA", seq=1, ack=4, payload=b"resp", c2s=False)
    assert box.process(reply, 0).replacement is not None
    with pytest.raises(ValueError):
        Tamper(direction="sideways")


def flipped_bytes(before: bytes, after: bytes) -> list[int]:
    return [i for i, (x, y) in enumerate(zip(before, after, strict=True)) if x != y]


def test_tamper_skip_spares_each_streams_leading_bytes() -> None:
    # Server ISN 0xFFFFFFF0: its stream offsets wrap the sequence space.
    box = Tamper(rate=1.0, skip=10, seed=7)
    box.process(seg("S", seq=100), 0)
    box.process(seg("SA", seq=0xFFFFFFF0, ack=101, c2s=False), 0)
    # Client bytes 0..9 (seq 101..110) are spared and take no draw.
    spared = seg("PA", seq=101, ack=0xFFFFFFF1, payload=b"\x00" * 10)
    assert box.process(spared, 0) == ACCEPT
    # Server bytes 5..24 straddle the boundary: the flip lands in bytes 10..24.
    for n in range(40):
        box.rng.seed(n)
        reply = seg("PA", seq=0xFFFFFFF6, ack=111, payload=b"\x00" * 20, c2s=False)
        changed = bytes(valid(out(box.process(reply, 0), reply))[TCP].payload)
        (index,) = flipped_bytes(b"\x00" * 20, changed)
        assert index >= 5, (n, index)
    # A client segment from byte 10 on is at risk from its first byte.
    later = seg("PA", seq=111, ack=0xFFFFFFF1, payload=b"\x00" * 4)
    assert box.process(later, 0).replacement is not None
    assert box.counters.changed == 41


def test_tamper_skip_counts_the_data_on_a_syn() -> None:
    # A TFO SYN's payload is stream byte 0 on (the SYN's own sequence number comes first).
    box = Tamper(rate=1.0, skip=3, seed=2)
    syn = seg("S", seq=500, payload=b"\x00" * 4)
    changed = bytes(valid(out(box.process(syn, 0), syn))[TCP].payload)
    assert flipped_bytes(b"\x00" * 4, changed) == [3]


def test_tamper_skip_spares_flows_it_did_not_see_open() -> None:
    box = Tamper(rate=1.0, skip=1)
    data = seg("PA", seq=5000, ack=1, payload=b"\x00" * 100)
    assert box.process(data, 0) == ACCEPT
    # Without skip, the same segment is at risk: stream offsets are not needed.
    assert Tamper(rate=1.0).process(data, 0).replacement is not None
    # The server's bytes stay spared until its SYN-ACK gives its ISN.
    box.process(seg("S", seq=0), 0)
    reply = seg("PA", seq=900, ack=1, payload=b"\x00" * 100, c2s=False)
    assert box.process(reply, 0) == ACCEPT
    with pytest.raises(ValueError, match="skip"):
        Tamper(skip=-1)


# -- add-option ---------------------------------------------------------------------------


def test_add_option_marks_syn_and_first_ack_only() -> None:
    box = AddOption(kind=69, data="20", segments="syn,ack")
    syn = seg("S", seq=10)
    assert (69, b"\x20") in valid(out(box.process(syn, 0), syn))[TCP].options
    first_ack = seg("A", seq=11, ack=1)
    assert (69, b"\x20") in valid(out(box.process(first_ack, 0), first_ack))[TCP].options
    later = seg("PA", seq=11, ack=1, payload=b"x")
    assert box.process(later, 0) == ACCEPT
    synack = seg("SA", seq=0, ack=11, c2s=False)
    assert box.process(synack, 0) == ACCEPT


def test_add_option_passes_segments_without_room() -> None:
    box = AddOption(kind=69, data="20" * 10, segments="all")
    full = seg("S", options=[("NOP", None)] * 32)
    assert box.process(full, 0) == ACCEPT


# -- cross-syns --------------------------------------------------------------------------


def test_cross_syns_releases_the_held_syn_with_the_other_directions() -> None:
    box = CrossSyns()
    first = seg("S", seq=100)
    assert box.process(first, 0) == DROP
    again = seg("S", seq=100, ip_id=2)  # the held side's retransmission replaces its copy
    assert box.process(again, 0) == DROP
    other = seg("S", seq=900, c2s=False)
    assert box.process(other, 0) == Decision(inject=(again,))
    assert box.counters.as_dict() == {"seen": 3, "changed": 0, "dropped": 2, "reset": 0,
                                      "injected": 1}
    assert box.flush() == []
    # Everything but a SYN without ACK passes, held SYN or not.
    assert box.process(seg("SA", seq=900, ack=101, c2s=False), 0) == ACCEPT
    assert box.process(seg("A", seq=101, ack=901), 0) == ACCEPT


def test_cross_syns_port_and_flush() -> None:
    box = CrossSyns(port=6000)
    assert box.process(seg("S", seq=1), 0) == ACCEPT  # 40000 -> 5000: not the port
    lone = IP(src="10.0.1.1", dst="10.0.2.2") / TCP(sport=6000, dport=6000, flags="S")
    assert box.process(bytes(lone), 0) == DROP
    assert box.flush() == [bytes(lone)]  # a stopping box lets the lone SYN go
    assert box.flush() == []


# -- resegment ----------------------------------------------------------------------------


def test_split_copies_options_and_keeps_psh_fin_on_last_piece() -> None:
    big = p.parse(seg("FPA", seq=100, ack=7, payload=bytes(range(250)), ip_id=40))
    assert big is not None
    pieces = split_segment(big, 100)
    assert [len(x.payload) for x in pieces] == [100, 100, 50]
    assert [x.seq for x in pieces] == [100, 200, 300]
    assert all(x.options == big.options for x in pieces)
    assert [x.flags & (p.PSH | p.FIN) for x in pieces] == [0, 0, p.PSH | p.FIN]
    assert [x.ip_id for x in pieces] == [40, 41, 42]
    assert b"".join(x.payload for x in pieces) == big.payload
    for x in pieces:
        valid(x.to_bytes())


def test_resegment_splits_by_dropping_and_injecting_pieces() -> None:
    box = Resegment(split=100, coalesce=False)
    data = seg("PA", seq=1, ack=1, payload=b"a" * 250)
    decision = box.process(data, 0.0)
    assert not decision.accept and len(decision.inject) == 3
    assert [len(IP(x)[TCP].payload) for x in decision.inject] == [100, 100, 50]
    small = seg("PA", seq=251, ack=1, payload=b"b" * 50)
    assert box.process(small, 0.0) == ACCEPT


def test_resegment_coalesces_contiguous_segments_until_the_timer() -> None:
    box = Resegment(split=100, coalesce=True, hold_ms=2.0)
    first = seg("PA", seq=1, ack=1, payload=b"a" * 30)
    assert box.process(first, 0.0) == Decision(accept=False)
    assert box.next_deadline() == pytest.approx(0.002)
    second = seg("PA", seq=31, ack=9, payload=b"b" * 30, options=[("NOP", None),
                                                                   ("NOP", None),
                                                                   ("Timestamp", (5, 6))])
    assert box.process(second, 0.001) == Decision(accept=False)
    assert box.poll(0.0015) == []
    [merged] = box.poll(0.002)
    got = valid(merged)
    assert got[TCP].seq == 1 and got[TCP].ack == 9  # first's seq, newest header
    assert bytes(got[TCP].payload) == b"a" * 30 + b"b" * 30
    assert dict(got[TCP].options)["Timestamp"] == (5, 6)
    assert box.next_deadline() is None


def test_resegment_releases_held_data_before_a_fin_or_a_gap() -> None:
    box = Resegment(split=100, coalesce=True)
    held = seg("PA", seq=1, ack=1, payload=b"a" * 10)
    box.process(held, 0.0)
    fin = seg("FA", seq=11, ack=1)
    decision = box.process(fin, 0.0)
    assert decision.accept and decision.inject == (held,)
    box.process(held, 0.0)
    gap = seg("PA", seq=500, ack=1, payload=b"z" * 10)
    decision = box.process(gap, 0.0)
    assert decision.inject == (held,) and not decision.accept  # the gap segment is now held
    assert box.flush() == [gap]


def test_resegment_releases_when_the_merge_reaches_split() -> None:
    box = Resegment(split=40, coalesce=True)
    box.process(seg("PA", seq=1, ack=1, payload=b"a" * 20), 0.0)
    decision = box.process(seg("PA", seq=21, ack=1, payload=b"b" * 20), 0.0)
    assert not decision.accept and len(decision.inject) == 1
    assert len(IP(decision.inject[0])[TCP].payload) == 40
    assert box.counters.as_dict() == {"seen": 2, "changed": 1, "dropped": 0, "reset": 0,
                                      "injected": 1}


def test_merge_keeps_psh_of_either() -> None:
    a = p.parse(seg("PA", seq=1, ack=1, payload=b"a"))
    b = p.parse(seg("A", seq=2, ack=3, payload=b"b"))
    assert a is not None and b is not None
    merged = merge_segments(a, b)
    assert merged.flags & p.PSH and merged.seq == 1 and merged.ack == 3


def test_resegment_never_touches_syns() -> None:
    box = Resegment(split=1, coalesce=True)
    tfo = seg("S", seq=1, payload=b"syn data")
    assert box.process(tfo, 0.0) == ACCEPT


# -- shared helpers -----------------------------------------------------------------------


def test_flow_table_finds_both_directions_and_evicts_oldest() -> None:
    table: FlowTable[int] = FlowTable(limit=2)
    a = p.parse(seg("S"))
    b = p.parse(seg("SA", c2s=False))
    assert a is not None and b is not None
    table.put(a, 1)
    assert table.get(b) == 1
    for port in (1, 2):
        other = p.parse(bytes(IP(src="9.9.9.9", dst="8.8.8.8") / TCP(sport=port)))
        assert other is not None
        table.put(other, port)
    assert table.get(a) is None and len(table) == 2


def test_stream_cursor_orders_and_deduplicates() -> None:
    cur = StreamCursor()
    cur.syn(0xFFFFFFFE)  # the stream starts at 0xFFFFFFFF and wraps
    assert cur.feed(0xFFFFFFFF, b"ab") == b"ab"
    assert cur.feed(3, b"ef") == b""  # hole at 1..2
    assert cur.feed(0xFFFFFFFF, b"ab") == b""  # retransmission
    assert cur.feed(0, b"bcd") == b"cdef"  # overlap trimmed, hole filled, pending drained


def test_create_model_refuses_unknown_names_and_parameters() -> None:
    with pytest.raises(ValueError, match="unknown packet model"):
        create_model("nope", {})
    with pytest.raises(ValueError, match="no parameter"):
        create_model("tamper", {"bogus": 1})


class FakeQueued:
    def __init__(self, data: bytes, log: list[str]) -> None:
        self.data, self.log = data, log

    def get_payload(self) -> bytes:
        return self.data

    def set_payload(self, data: bytes) -> None:
        self.log.append("set")
        self.data = data

    def accept(self) -> None:
        self.log.append("accept")

    def drop(self) -> None:
        self.log.append("drop")


class FakeInjector:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def send(self, packet: bytes) -> None:
        self.log.append(f"inject {len(packet)}")


def test_runner_injects_before_the_verdict() -> None:
    log: list[str] = []
    runner = Runner(Resegment(split=100, coalesce=False), FakeInjector(log))  # type: ignore[arg-type]
    runner.on_packet(FakeQueued(seg("PA", seq=1, ack=1, payload=b"a" * 150), log))
    assert log == ["inject 152", "inject 102", "drop"]
    log.clear()
    runner.model = IsnRewrite(offset=1)
    runner.on_packet(FakeQueued(seg("S", seq=1), log))
    assert log == ["set", "accept"]
    assert runner.snapshot()["counters"]["changed"] == 1
