"""Tests for testbed.net.flows: connections from the segments of a capture (grouping and
orientation, timelines, flights, retransmissions, byte streams). The capture is the one
tests/unit/pcap_capture.py crafts.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from testbed.net.flows import (
    ConnKey,
    Event,
    EventKind,
    Retransmission,
    connections,
    payload_contains,
)
from testbed.net.pcap import IncompleteCaptureError, Segment, read_segments
from tests.unit.pcap_capture import (
    CONN_A,
    CONN_B,
    CONN_C,
    CONN_D,
    CONN_V6,
    ENO_DATA,
    REQUEST,
    RESPONSE,
    T0_NS,
    C,
    S,
    _tcp,
    pcap_bytes,
)


def test_connection_grouping_and_orientation(segments: list[Segment]) -> None:
    conns = connections(segments)
    assert list(conns) == [CONN_A, CONN_B, CONN_C, CONN_D, CONN_V6]
    a = conns[CONN_A]
    assert [(cs.direction, cs.segment.flag_str, cs.segment.seq, cs.segment.ack,
             cs.segment.payload_len) for cs in a.segments] == [
        ("c2s", "S", 1000, 0, 0), ("s2c", "SA", 5000, 1001, 0), ("c2s", "A", 1001, 5001, 0),
        ("c2s", "PA", 1001, 5001, 18), ("s2c", "A", 5001, 1019, 0),
        ("s2c", "PA", 5001, 1019, 24), ("c2s", "A", 1019, 5025, 0),
        ("c2s", "FA", 1019, 5025, 0), ("s2c", "FA", 5025, 1020, 0), ("c2s", "A", 1020, 5026, 0),
    ]
    assert [cs.index for cs in a.segments] == list(range(10))
    assert [cs.t for cs in a.segments] == [
        0.0, 0.0001, 0.00015, 0.0002, 0.0003, 0.0004, 0.0005, 0.0006, 0.0007, 0.0008]
    assert (a.t0, a.t0_ns) == (1_700_000_000.0, T0_NS)
    assert str(CONN_A) == "10.0.0.1:40001->10.0.0.2:80"


def test_timeline_plain_connection(segments: list[Segment]) -> None:
    assert connections(segments)[CONN_A].timeline() == [
        Event(EventKind.SYN, 0.0, 0, "c2s"),
        Event(EventKind.SYNACK, 0.0001, 1, "s2c"),
        Event(EventKind.FIRST_ACK, 0.00015, 2, "c2s"),
        Event(EventKind.FIRST_DATA_C2S, 0.0002, 3, "c2s"),
        Event(EventKind.FIRST_DATA_S2C, 0.0004, 5, "s2c"),
        Event(EventKind.FIN_C2S, 0.0006, 7, "c2s"),
        Event(EventKind.FIN_S2C, 0.0007, 8, "s2c"),
    ]


def test_timeline_syn_retransmit_eno_and_rst(segments: list[Segment]) -> None:
    conns = connections(segments)
    assert conns[CONN_B].timeline() == [
        Event(EventKind.SYN, 0.0, 0, "c2s"),
        Event(EventKind.SYN_RETRANSMIT, 1.0, 1, "c2s"),
        Event(EventKind.SYNACK, 1.0001, 2, "s2c"),
        Event(EventKind.FIRST_ACK, 1.00015, 3, "c2s"),
    ]
    # The first ACK carries data: both events point at the same segment.
    assert conns[CONN_C].timeline() == [
        Event(EventKind.SYN, 0.0, 0, "c2s"),
        Event(EventKind.SYNACK, 0.0001, 1, "s2c"),
        Event(EventKind.FIRST_ACK, 0.00015, 2, "c2s"),
        Event(EventKind.FIRST_DATA_C2S, 0.00015, 2, "c2s"),
    ]
    assert conns[CONN_D].timeline() == [
        Event(EventKind.SYN, 0.0, 0, "c2s"),
        Event(EventKind.RST, 0.00005, 1, "s2c"),
    ]
    assert conns[CONN_V6].timeline() == [Event(EventKind.SYN, 0.0, 0, "c2s")]


def test_flights(segments: list[Segment]) -> None:
    conns = connections(segments)
    a = conns[CONN_A]
    assert [(f.direction, f.indices, f.payload_len) for f in a.flights()] == [
        ("c2s", (0,), 0), ("s2c", (1,), 0), ("c2s", (3,), 18), ("s2c", (5,), 24),
        ("c2s", (7,), 0), ("s2c", (8,), 0),
    ]
    first_data = next(e for e in a.timeline() if e.kind is EventKind.FIRST_DATA_C2S)
    upto = a.flights(until_ts=first_data.t)
    assert [f.indices for f in upto] == [(0,), (1,), (3,)]
    assert a.flights(until_index=first_data.index) == upto
    assert (upto[1].t_start, upto[1].t_end) == (0.0001, 0.0001)
    b_flights = conns[CONN_B].flights()
    assert [(f.direction, f.indices) for f in b_flights] == [("c2s", (0, 1)), ("s2c", (2,))]
    assert (b_flights[0].t_start, b_flights[0].t_end) == (0.0, 1.0)
    assert [(f.direction, f.indices) for f in conns[CONN_C].flights()] == [
        ("c2s", (0,)), ("s2c", (1,)), ("c2s", (2, 3))]
    assert [(f.direction, f.indices) for f in conns[CONN_D].flights()] == [
        ("c2s", (0,)), ("s2c", (1,))]


def test_retransmissions(segments: list[Segment]) -> None:
    conns = connections(segments)
    assert conns[CONN_A].retransmissions() == []
    assert conns[CONN_B].retransmissions() == [
        Retransmission(index=1, original_index=0, direction="c2s", seq=2000, seg_len=1, t=1.0,
                       delay=1.0)]
    (retx,) = conns[CONN_C].retransmissions()
    assert (retx.index, retx.original_index, retx.seq, retx.seg_len) == (3, 2, 3001, 9)
    assert retx.t == 0.20015 and retx.delay == pytest.approx(0.2, abs=1e-12)


def test_streams_and_payload_contains(segments: list[Segment]) -> None:
    conns = connections(segments)
    a, c = conns[CONN_A], conns[CONN_C]
    assert a.stream_chunks("c2s") == [REQUEST]
    assert a.stream_chunks("s2c") == [RESPONSE]
    assert c.stream_chunks("c2s") == [ENO_DATA]  # the retransmission overlaps, no duplicate
    assert payload_contains(a, b"200 OK")
    assert payload_contains(a, b"GET", direction="c2s")
    assert not payload_contains(a, b"GET", direction="s2c")
    assert not payload_contains(a, b"secret")
    with pytest.raises(ValueError):
        payload_contains(a, b"")


def test_payload_contains_across_segments_and_wrap(segments: list[Segment]) -> None:
    request = connections(segments)[CONN_A].segments[3].segment
    base = 0xFFFFFFFA  # the stream wraps the 32-bit sequence space in the middle
    parts = [(base, b"xxpass"), ((base + 6) & 0xFFFFFFFF, b"wordyy")]
    segs = [replace(request, seq=seq, payload=p, payload_len=len(p)) for seq, p in reversed(parts)]
    conn = connections(segs)[CONN_A]
    assert sorted(conn.stream_chunks("c2s")) == [b"xxpasswordyy"]
    assert payload_contains(conn, b"password")
    gap = connections([segs[0], replace(segs[1], seq=base - 100)])[CONN_A]
    assert sorted(gap.stream_chunks("c2s")) == [b"wordyy", b"xxpass"]
    assert not payload_contains(gap, b"password")


def test_payload_contains_refuses_to_prove_absence_when_truncated() -> None:
    frame = bytes(_tcp(200, True, 40001, "PA", 1001, 5001, payload=REQUEST))
    cut = frame[: 14 + 20 + 20 + 5]
    segs = read_segments(pcap_bytes([(1_700_000_000, 200, cut, len(frame))]))
    seg = segs[0]
    assert (seg.payload_len, seg.payload, seg.truncated) == (18, b"GET /", True)
    conn = connections(segs)[CONN_A]
    assert payload_contains(conn, b"GET")
    with pytest.raises(IncompleteCaptureError, match="truncated"):
        payload_contains(conn, b"HTTP")


def test_orientation_fallbacks(segments: list[Segment]) -> None:
    a = [cs.segment for cs in connections(segments)[CONN_A].segments]
    from_synack = connections(a[1:])
    assert list(from_synack) == [CONN_A]  # the SYN-ACK's receiver is the client
    assert from_synack[CONN_A].t0_ns == T0_NS + 100_000
    mid = connections(a[4:])  # first segment s2c: with no handshake the first sender wins
    assert list(mid) == [ConnKey(S, 80, C, 40001)]


def test_reused_four_tuple_gets_new_generation(segments: list[Segment]) -> None:
    d = [cs.segment for cs in connections(segments)[CONN_D].segments]
    again = replace(d[0], seq=4444, ts_ns=d[0].ts_ns + 10**9, record=99)
    conns = connections([*d, again])
    assert list(conns) == [CONN_D, replace(CONN_D, generation=1)]
    assert str(replace(CONN_D, generation=1)) == "10.0.0.1:40004->10.0.0.2:81#1"
    assert [cs.segment.seq for cs in conns[replace(CONN_D, generation=1)].segments] == [4444]
    # A retransmitted SYN (same ISN) stays in its connection.
    assert list(connections([d[0], d[0]])) == [CONN_D]
