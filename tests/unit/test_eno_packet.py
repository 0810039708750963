"""Raw segment parsing and rewriting (testbed/packet.py), checked against scapy."""

from __future__ import annotations

import random
import struct

import pytest

from testbed.eno.tcp_options import append_eno
from testbed.packet import (
    PacketError,
    checksums_ok,
    ones_complement_sum,
    parse_segment,
    with_options,
    without_payload,
)
from tests.eno_segments import KERNEL_SYN_OPTIONS, scapy_checksums_ok, segment

A, B = ("10.0.1.1", 40000), ("10.0.1.2", 5000)


def naive_sum(data: bytes) -> int:
    """RFC 1071 with an explicit carry fold, the textbook way."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


@pytest.mark.parametrize("seed", range(40))
def test_ones_complement_sum_matches_rfc1071(seed):
    rng = random.Random(seed)
    data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 1500)))
    assert ones_complement_sum(data) == naive_sum(data)


def test_ones_complement_sum_edge_cases():
    assert ones_complement_sum(b"\xff\xff") == 0xFFFF == naive_sum(b"\xff\xff")
    assert ones_complement_sum(b"\xff\xff\xff\xff") == naive_sum(b"\xff\xff\xff\xff")
    assert ones_complement_sum(b"\x00\x00") == 0
    assert ones_complement_sum(b"\x01") == naive_sum(b"\x01") == 0x0100


def test_parse_reads_the_headers():
    pkt = segment(A, B, "S", 1000)
    seg = parse_segment(pkt)
    assert (seg.src, seg.sport, seg.dst, seg.dport) == (*A, *B)
    assert seg.seq == 1000 and seg.is_syn and not seg.is_ack
    assert seg.options == KERNEL_SYN_OPTIONS and seg.payload_len == 0
    assert checksums_ok(pkt) and scapy_checksums_ok(pkt)


@pytest.mark.parametrize("mangle, why", [
    (lambda p: b"\x60" + p[1:], "IPv6 version nibble"),
    (lambda p: p[:9] + b"\x11" + p[10:], "UDP"),
    (lambda p: p[:30], "truncated"),
    (lambda p: p[:2] + struct.pack("!H", len(p) + 4) + p[4:], "total length"),
    (lambda p: p[:6] + b"\x20\x00" + p[8:], "more fragments"),
    (lambda p: p[:32] + b"\x20" + p[33:], "data offset 8 bytes"),
    (lambda p: p[:32] + b"\xf0" + p[33:], "data offset past the end"),
    (lambda p: b"\x44" + p[1:], "IHL 16"),
])
def test_parse_refuses_what_is_not_one_ipv4_tcp_segment(mangle, why):
    with pytest.raises(PacketError):
        parse_segment(mangle(segment(A, B, "S", 1)))


def test_appending_eno_keeps_kernel_options_verbatim_and_checksums_correct():
    pkt = segment(A, B, "S", 7, payload=b"")
    seg = parse_segment(pkt)
    new = with_options(seg, append_eno(seg.options, bytes.fromhex("45042021")))
    out = parse_segment(new)
    assert out.options == KERNEL_SYN_OPTIONS + bytes.fromhex("45042021")
    assert out.doff == 44 and len(new) == len(pkt) + 4
    assert new[:2] == pkt[:2] and new[4:10] == pkt[4:10], "only length and checksum change"
    assert checksums_ok(new) and scapy_checksums_ok(new)


def test_rewriting_a_data_segment_keeps_the_payload():
    data = bytes(range(256)) * 5 + b"x"  # odd length
    pkt = segment(A, B, "PA", 100, 200, payload=data)
    seg = parse_segment(pkt)
    new = with_options(seg, append_eno(seg.options, bytes.fromhex("4502")))
    assert new.endswith(data) and scapy_checksums_ok(new)


def test_without_payload_drops_syn_data():
    pkt = segment(A, B, "S", 9, payload=b"hello world")
    new = without_payload(parse_segment(pkt))
    out = parse_segment(new)
    assert out.payload_len == 0 and out.options == KERNEL_SYN_OPTIONS and out.seq == 9
    assert scapy_checksums_ok(new)


def test_options_block_must_be_whole_words():
    seg = parse_segment(segment(A, B, "S", 1))
    with pytest.raises(PacketError):
        with_options(seg, b"\x01" * 3)
    with pytest.raises(PacketError):
        with_options(seg, b"\x01" * 44)
