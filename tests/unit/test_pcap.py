"""Tests for testbed.net.pcap (the pure pcap reader) and testbed.net.flows (connections).

The test capture is crafted with scapy (``build_handshake_packets``) so every field is known;
tests/data/handshake_small.pcap is the committed copy of it (regenerate with
``python tests/unit/test_pcap.py``), checked against a fresh build below.
"""

from __future__ import annotations

import contextlib
import random
import struct
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, CookedLinux, CookedLinuxV2, Ether
from scapy.packet import Packet, Padding, Raw
from scapy.utils import EDecimal, PcapWriter, rdpcap

from testbed.net.flows import (
    ConnKey,
    Event,
    EventKind,
    Retransmission,
    connections,
    payload_contains,
)
from testbed.net.pcap import (
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
    IncompleteCaptureError,
    PcapError,
    PcapReader,
    Segment,
    options_of,
    parse_options,
    read_segments,
)

DATA = Path(__file__).resolve().parent.parent / "data"
COMMITTED = DATA / "handshake_small.pcap"
T0 = EDecimal("1700000000")
T0_NS = 1_700_000_000 * 10**9
C, S = "10.0.0.1", "10.0.0.2"
CMAC, SMAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
SYN_OPTS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]
SYNACK_OPTS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (2, 1)), ("NOP", None),
               ("WScale", 7)]
REQUEST = b"GET / HTTP/1.0\r\n\r\n"
RESPONSE = b"HTTP/1.0 200 OK\r\n\r\nhello"
ENO_DATA = b"hello-eno"
CONN_A = ConnKey(C, 40001, S, 80)
CONN_B = ConnKey(C, 40002, S, 80)
CONN_C = ConnKey(C, 40003, S, 443)
CONN_D = ConnKey(C, 40004, S, 81)
CONN_V6 = ConnKey("fd00::1", 40005, "fd00::2", 80)


def _tcp(us: int, c2s: bool, port: int, flags: str, seq: int, ack: int = 0,
         options: list | None = None, payload: bytes = b"", sport: int = 80) -> Packet:
    """One Ethernet/IPv4/TCP packet ``us`` microseconds after T0."""
    src, dst = (C, S) if c2s else (S, C)
    sp, dp = (port, sport) if c2s else (sport, port)
    pkt = (Ether(src=CMAC if c2s else SMAC, dst=SMAC if c2s else CMAC)
           / IP(src=src, dst=dst, id=1, ttl=64)
           / TCP(sport=sp, dport=dp, flags=flags, seq=seq, ack=ack, window=64240 if c2s else 65160,
                 options=options or []))
    if payload:
        pkt = pkt / Raw(payload)
    pkt.time = T0 + EDecimal(us) / EDecimal(10**6)
    return pkt


def build_handshake_packets() -> list[Packet]:
    """The test capture: four IPv4 connections, one IPv6 SYN, an ARP and a UDP packet."""
    a = [  # plain connection with data both ways and FIN
        _tcp(0, True, 40001, "S", 1000, options=SYN_OPTS),
        _tcp(100, False, 40001, "SA", 5000, 1001, options=SYNACK_OPTS),
        _tcp(150, True, 40001, "A", 1001, 5001) / Padding(b"\x00" * 6),  # Ethernet min size
        _tcp(200, True, 40001, "PA", 1001, 5001, payload=REQUEST),
        _tcp(300, False, 40001, "A", 5001, 1019),
        _tcp(400, False, 40001, "PA", 5001, 1019, payload=RESPONSE),
        _tcp(500, True, 40001, "A", 1019, 5025),
        _tcp(600, True, 40001, "FA", 1019, 5025),
        _tcp(700, False, 40001, "FA", 5025, 1020),
        _tcp(800, True, 40001, "A", 1020, 5026),
    ]
    b = [  # SYN retransmitted after a 1 s RTO (RFC 6298 section 2.1)
        _tcp(10_000, True, 40002, "S", 2000),
        _tcp(1_010_000, True, 40002, "S", 2000),
        _tcp(1_010_100, False, 40002, "SA", 6000, 2001),
        _tcp(1_010_150, True, 40002, "A", 2001, 6001),
    ]
    c = [  # TCP-ENO option (kind 69) on SYN and SYN-ACK, data on the first ACK, retransmitted
        _tcp(20_000, True, 40003, "S", 3000, options=[("MSS", 1460), (69, b"\x20")], sport=443),
        _tcp(20_100, False, 40003, "SA", 7000, 3001, options=[("MSS", 1460), (69, b"\x21")],
             sport=443),
        _tcp(20_150, True, 40003, "PA", 3001, 7001, payload=ENO_DATA, sport=443),
        _tcp(220_150, True, 40003, "PA", 3001, 7001, payload=ENO_DATA, sport=443),
        _tcp(220_250, False, 40003, "A", 7001, 3010, sport=443),
    ]
    d = [  # closed port: RST
        _tcp(30_000, True, 40004, "S", 4000, sport=81),
        _tcp(30_050, False, 40004, "RA", 0, 4001, sport=81),
    ]
    v6 = Ether(src=CMAC, dst=SMAC) / IPv6(src="fd00::1", dst="fd00::2") / TCP(
        sport=40005, dport=80, flags="S", seq=9000, window=64800)
    v6.time = T0 + EDecimal("0.04")
    arp = Ether(src=CMAC, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=C, pdst=S, hwsrc=CMAC)
    arp.time = T0 + EDecimal("0.000120")
    udp = Ether(src=CMAC, dst=SMAC) / IP(src=C, dst=S, id=2) / UDP(sport=5353, dport=53) / Raw(
        b"dns?")
    udp.time = T0 + EDecimal("0.000130")
    return sorted([*a, *b, *c, *d, v6, arp, udp], key=lambda p: p.time)


def write_pcap(path: Path, packets: list[Packet], *, nano: bool = False, endian: str = "<",
               linktype: int | None = None) -> Path:
    """Write packets with scapy's own writer, independent of the reader under test."""
    with PcapWriter(str(path), nano=nano, endianness=endian, linktype=linktype,
                    sync=True) as writer:
        for pkt in packets:
            writer.write(pkt)
    return path


def pcap_bytes(records: list[tuple[int, int, bytes, int]], *, linktype: int = 1) -> bytes:
    """A hand-made pcap: records are (sec, usec, captured bytes, original length)."""
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    for sec, usec, data, orig in records:
        out += struct.pack("<IIII", sec, usec, len(data), orig) + data
    return out


@pytest.fixture(scope="module")
def packets() -> list[Packet]:
    return build_handshake_packets()


@pytest.fixture(scope="module")
def pcap_path(tmp_path_factory: pytest.TempPathFactory, packets: list[Packet]) -> Path:
    return write_pcap(tmp_path_factory.mktemp("pcap") / "handshake.pcap", packets)


@pytest.fixture(scope="module")
def segments(pcap_path: Path) -> list[Segment]:
    return read_segments(pcap_path)


def test_committed_file_matches_builder(segments: list[Segment]) -> None:
    assert COMMITTED.stat().st_size < 20_000
    assert read_segments(COMMITTED) == segments


def test_reader_header_and_stats(pcap_path: Path) -> None:
    with PcapReader(pcap_path) as reader:
        segs = list(reader)
        assert reader.header.linktype == 1
        assert reader.header.nanosecond is False
        assert reader.header.byte_order == "<"
        assert reader.header.version == (2, 4)
        assert (reader.stats.records, reader.stats.segments) == (24, 22)
        assert reader.stats.skipped_non_ip == 1  # ARP
        assert reader.stats.skipped_non_tcp == 1  # UDP
        assert reader.stats.skipped_fragments == 0
    assert len(segs) == 22


def test_syn_every_field(segments: list[Segment]) -> None:
    syn = segments[0]
    assert syn.record == 0
    assert syn.ts_ns == T0_NS
    assert syn.ts == 1_700_000_000.0
    assert (syn.ip_version, syn.src, syn.sport, syn.dst, syn.dport) == (4, C, 40001, S, 80)
    assert (syn.seq, syn.ack, syn.flags, syn.window) == (1000, 0, 0x02, 64240)
    assert (syn.is_syn, syn.is_ack, syn.is_fin, syn.is_rst, syn.is_psh) == (
        True, False, False, False, False)
    assert syn.options_raw == bytes.fromhex("020405b4" "0402" "080a0000000100000000" "01" "030307")
    assert syn.options == ((2, b"\x05\xb4"), (4, b""), (8, bytes.fromhex("0000000100000000")),
                           (1, b""), (3, b"\x07"))
    assert syn.options_error is None and not syn.options_malformed
    assert (syn.payload_len, syn.payload, syn.seg_len) == (0, b"", 1)
    assert (syn.ip_header_len, syn.tcp_header_len) == (20, 40)
    assert syn.flag_str == "S"
    assert not syn.is_pure_ack and not syn.truncated


def test_data_and_padded_ack_fields(segments: list[Segment]) -> None:
    padded_ack, request = segments[2], segments[3]
    # Ethernet padding follows the IP packet: the IP total length must exclude it.
    assert padded_ack.record == 4  # after the ARP (2) and UDP (3) records
    assert (padded_ack.payload_len, padded_ack.payload, padded_ack.tcp_header_len) == (0, b"", 20)
    assert padded_ack.is_pure_ack and padded_ack.flag_str == "A"
    assert request.record == 5
    assert request.ts_ns == T0_NS + 200_000
    assert (request.seq, request.ack, request.flags) == (1001, 5001, 0x18)
    assert request.flag_str == "PA" and request.is_psh and request.is_ack
    assert (request.payload_len, request.payload) == (len(REQUEST), REQUEST)
    assert (request.options_raw, request.options, request.seg_len) == (b"", (), len(REQUEST))


def test_eno_option_and_eol(segments: list[Segment]) -> None:
    conn = connections(segments)[CONN_C]
    syn, synack = conn.segments[0].segment, conn.segments[1].segment
    assert syn.options_raw == bytes.fromhex("020405b445032000")
    assert syn.options == ((2, b"\x05\xb4"), (69, b"\x20"), (0, b""))
    assert options_of(syn, 69) == [b"\x20"]
    assert options_of(synack, 69) == [b"\x21"]
    assert options_of(conn.segments[2].segment, 69) == []
    assert options_of(syn, 2) == [b"\x05\xb4"]


def test_ipv6_segment(segments: list[Segment]) -> None:
    v6 = connections(segments)[CONN_V6].segments[0].segment
    assert (v6.ip_version, v6.ip_header_len, v6.tcp_header_len) == (6, 40, 20)
    assert (v6.src, v6.sport, v6.dst, v6.dport, v6.seq) == ("fd00::1", 40005, "fd00::2", 80, 9000)
    assert v6.ts_ns == T0_NS + 40_000_000


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


def test_nanosecond_and_big_endian_variants(tmp_path: Path, packets: list[Packet],
                                            segments: list[Segment]) -> None:
    for nano, endian in ((True, "<"), (False, ">"), (True, ">")):
        path = write_pcap(tmp_path / f"v{nano}{endian}.pcap", packets, nano=nano, endian=endian)
        with PcapReader(path) as reader:
            assert (reader.header.nanosecond, reader.header.byte_order) == (nano, endian)
            assert list(reader) == segments


def test_nanosecond_resolution_is_kept(tmp_path: Path) -> None:
    pkt = _tcp(0, True, 40001, "S", 1000)
    pkt.time = EDecimal("1700000000.123456789")
    (seg,) = read_segments(write_pcap(tmp_path / "ns.pcap", [pkt], nano=True))
    assert seg.ts_ns == 1_700_000_000_123_456_789
    assert seg.ts == pytest.approx(1_700_000_000.123456789, abs=1e-6)


@pytest.mark.parametrize("linktype,wrap", [
    (LINKTYPE_RAW, lambda p: p[IP]),
    (LINKTYPE_LINUX_SLL, lambda p: CookedLinux(pkttype=4, proto=0x0800) / p[IP]),
    (LINKTYPE_LINUX_SLL2, lambda p: CookedLinuxV2(proto=0x0800, ifindex=2) / p[IP]),
])
def test_other_link_types(tmp_path: Path, packets: list[Packet], segments: list[Segment],
                          linktype: int, wrap: Callable[[Packet], Packet]) -> None:
    wrapped = []
    for pkt in packets:
        if IP in pkt and TCP in pkt:
            new = wrap(pkt)
            new.time = pkt.time
            wrapped.append(new)
    path = write_pcap(tmp_path / f"lt{linktype}.pcap", wrapped, linktype=linktype)
    with PcapReader(path) as reader:
        assert reader.header.linktype == linktype
        got = list(reader)
    want = [s for s in segments if s.ip_version == 4]
    assert [(s.src, s.sport, s.seq, s.flags, s.payload, s.options) for s in got] == [
        (s.src, s.sport, s.seq, s.flags, s.payload, s.options) for s in want]


def test_vlan_tagged_frame() -> None:
    frame = bytes(_tcp(0, True, 40001, "S", 1000))
    tagged = frame[:12] + bytes.fromhex("81000064") + frame[12:]
    (seg,) = read_segments(pcap_bytes([(1, 0, tagged, len(tagged))]))
    assert (seg.src, seg.seq, seg.flag_str) == (C, 1000, "S")


def test_truncated_files_raise_with_offset(pcap_path: Path) -> None:
    blob = pcap_path.read_bytes()
    with pytest.raises(PcapError, match="too short") as err:
        read_segments(blob[:10])
    assert err.value.offset == 0
    with pytest.raises(PcapError, match="truncated record header") as err:
        read_segments(blob[:24 + 8])
    assert err.value.offset == 24
    first_len = struct.unpack_from("<I", blob, 24 + 8)[0]
    with pytest.raises(PcapError, match="truncated data") as err:
        read_segments(blob[:24 + 16 + first_len - 1])
    assert err.value.offset == 24
    second = 24 + 16 + first_len
    with pytest.raises(PcapError, match=r"record 1: truncated") as err:
        read_segments(blob[:second + 20])
    assert err.value.offset == second
    assert read_segments(blob[:second]) == read_segments(blob)[:1]


def test_bad_headers_raise() -> None:
    frame = bytearray(bytes(_tcp(0, True, 40001, "S", 1000)))
    with pytest.raises(PcapError, match="bad pcap magic"):
        read_segments(b"\x00" * 24)
    with pytest.raises(PcapError, match="pcapng"):
        read_segments(bytes.fromhex("0a0d0d0a") + b"\x00" * 28)
    with pytest.raises(PcapError, match="unsupported link type 105"):
        read_segments(pcap_bytes([], linktype=105))
    with pytest.raises(PcapError, match="corrupt lengths"):
        read_segments(pcap_bytes([(1, 0, bytes(frame), 10)]))
    bad_doff = bytearray(frame)
    bad_doff[14 + 20 + 12] = 0x30  # data offset 3 words < 5 (RFC 9293 3.1)
    with pytest.raises(PcapError, match="bad TCP data offset 12") as err:
        read_segments(pcap_bytes([(1, 0, bytes(bad_doff), len(bad_doff))]))
    assert err.value.offset == 24
    with pytest.raises(PcapError, match="TCP header truncated"):
        read_segments(pcap_bytes([(1, 0, bytes(frame[:40]), len(frame))]))
    with pytest.raises(PcapError, match="link header truncated"):
        read_segments(pcap_bytes([(1, 0, bytes(frame[:10]), len(frame))]))


def test_bad_option_bytes_are_tolerated() -> None:
    # dataofs=6 makes the first 4 payload bytes the options: kind 69 claiming 9 bytes.
    pkt = (Ether(src=CMAC, dst=SMAC) / IP(src=C, dst=S)
           / TCP(sport=40001, dport=80, flags="S", seq=1, dataofs=6) / Raw(b"\x45\x09\x01\x02"))
    (seg,) = read_segments(pcap_bytes([(1, 0, bytes(pkt), len(pkt))]))
    assert seg.options_raw == b"\x45\x09\x01\x02"
    assert seg.options == ()
    assert seg.options_error == "option kind 69 at offset 0 has length 9, 4 bytes remain"
    assert seg.options_malformed and seg.tcp_header_len == 24 and seg.payload_len == 0


def test_parse_options_edge_cases() -> None:
    assert parse_options(b"") == ((), None)
    assert parse_options(b"\x01\x01\x45") == (
        ((1, b""), (1, b"")), "option kind 69 at offset 2 has no length byte")
    assert parse_options(b"\x45\x01\x00\x00") == ((), "option kind 69 at offset 0 has length 1, "
                                                      "4 bytes remain")
    # A known kind with a wrong length is kept and flagged; parsing goes on.
    assert parse_options(b"\x02\x03\x05\x01") == (
        ((2, b"\x05"), (1, b"")), "option kind 2 at offset 0 has length 3, expected 4")
    assert parse_options(b"\xfd\x04\xab\xcd\x00\x07") == (((253, b"\xab\xcd"), (0, b"")), None)


def test_snaplen_cutting_options_is_flagged_not_raised() -> None:
    frame = bytes(_tcp(0, True, 40001, "S", 1000, options=SYN_OPTS))
    (seg,) = read_segments(pcap_bytes([(1, 0, frame[:14 + 20 + 20 + 6], len(frame))]))
    assert seg.options_raw == bytes.fromhex("020405b40402")
    assert seg.options == ((2, b"\x05\xb4"), (4, b""))
    assert seg.options_error == "options truncated by snaplen: 6 of 20 bytes"


def test_fragments_are_skipped_and_counted() -> None:
    frag = Ether(src=CMAC, dst=SMAC) / IP(src=C, dst=S, flags="MF") / TCP(sport=1, dport=2)
    frag6 = (Ether(src=CMAC, dst=SMAC) / IPv6(src="fd00::1", dst="fd00::2", nh=44)
             / Raw(b"\x06\x00\x00\x01\x00\x00\x00\x01"))
    blob = pcap_bytes([(1, 0, bytes(frag), len(frag)), (1, 1, bytes(frag6), len(frag6))])
    with PcapReader(blob) as reader:
        assert list(reader) == []
        assert reader.stats.skipped_fragments == 2


def test_agrees_with_scapy_rdpcap(pcap_path: Path) -> None:
    assert_agrees_with_scapy(pcap_path)


def assert_agrees_with_scapy(path: Path) -> None:
    """Count, seq, flags and payload lengths from our reader equal scapy's dissection."""
    ours = read_segments(path)
    theirs = [p for p in rdpcap(str(path)) if TCP in p]
    assert len(ours) == len(theirs)
    for seg, pkt in zip(ours, theirs, strict=True):
        tcp = pkt[TCP]
        payload = bytes(tcp.payload)
        if Padding in tcp:
            payload = payload[: -len(tcp[Padding])]
        assert (seg.sport, seg.dport, seg.seq, seg.ack) == (tcp.sport, tcp.dport, tcp.seq, tcp.ack)
        assert seg.flags == int(tcp.flags)
        assert seg.payload_len == len(payload)
        assert seg.tcp_header_len == tcp.dataofs * 4


def test_fuzz_parses_or_raises_pcap_error(pcap_path: Path) -> None:
    """The only invariant: any input parses or raises PcapError, never another exception."""
    blob = pcap_path.read_bytes()
    for cut in range(len(blob) + 1):  # every prefix of the file
        with contextlib.suppress(PcapError):  # the only failure the invariant allows
            read_segments(blob[:cut])
    rng = random.Random(8547)
    for _ in range(400):
        mutated = bytearray(blob)
        for _ in range(rng.randint(1, 8)):
            mutated[rng.randrange(24, len(mutated))] = rng.randrange(256)
        with contextlib.suppress(PcapError):
            read_segments(bytes(mutated))
        parse_options(bytes(rng.randrange(256) for _ in range(rng.randrange(41))))


if __name__ == "__main__":
    # Regenerate the committed test capture: python tests/unit/test_pcap.py
    write_pcap(COMMITTED, build_handshake_packets())
    print(f"wrote {COMMITTED} ({COMMITTED.stat().st_size} bytes)", file=sys.stderr)
