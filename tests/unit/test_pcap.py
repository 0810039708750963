"""Tests for testbed.net.pcap, the pure pcap reader (connections: test_flows.py).

The test capture is crafted with scapy in tests/unit/pcap_capture.py so every field is known;
tests/data/handshake_small.pcap is the committed copy of it (regenerate with
``python tests/unit/pcap_capture.py``), checked against a fresh build below.
"""

from __future__ import annotations

import contextlib
import random
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Ether
from scapy.packet import Packet, Padding, Raw
from scapy.utils import EDecimal, rdpcap

from testbed.net.flows import connections
from testbed.net.pcap import (
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
    PcapError,
    PcapReader,
    Segment,
    options_of,
    parse_options,
    read_segments,
)
from tests.unit.pcap_capture import (
    CMAC,
    COMMITTED,
    CONN_C,
    CONN_V6,
    REQUEST,
    SMAC,
    SYN_OPTS,
    T0_NS,
    C,
    S,
    _tcp,
    pcap_bytes,
    write_pcap,
)


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
