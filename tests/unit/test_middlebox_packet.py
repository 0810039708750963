"""middleboxes.packet: raw IPv4/TCP parsing and rebuilding, checked against scapy."""

from __future__ import annotations

from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from middleboxes import packet as p
from testbed.packet import internet_checksum


def craft(flags: str = "S", payload: bytes = b"", options: list[Any] | None = None,
          **tcp: Any) -> bytes:
    opts = options if options is not None else [("MSS", 1460), ("SAckOK", b""),
                                                ("Timestamp", (1, 0)), ("NOP", None),
                                                ("WScale", 7)]
    fields: dict[str, Any] = {"sport": 40000, "dport": 5000, "seq": 1000, "ack": 0, **tcp}
    pkt = IP(src="10.0.1.1", dst="10.0.2.2", id=7, ttl=63) / TCP(
        flags=flags, options=opts, **fields)
    return bytes(pkt / payload) if payload else bytes(pkt)


def checksums_ok(raw: bytes) -> bool:
    """scapy recomputes both checksums from scratch; they must equal the ones we wrote."""
    got = IP(raw)
    fresh = IP(raw)
    del fresh.chksum
    del fresh[TCP].chksum
    fresh = IP(bytes(fresh))
    return got.chksum == fresh.chksum and got[TCP].chksum == fresh[TCP].chksum


def test_parse_reads_every_field() -> None:
    raw = craft("PA", b"hello", seq=123456, ack=654321, window=4321)
    pkt = p.parse(raw)
    assert pkt is not None
    assert pkt.flow == ("10.0.1.1", 40000, "10.0.2.2", 5000)
    assert (pkt.seq, pkt.ack, pkt.window, pkt.payload) == (123456, 654321, 4321, b"hello")
    assert pkt.has(p.PSH) and pkt.has(p.ACK) and not pkt.has(p.SYN)
    assert pkt.options == bytes(IP(raw)[TCP])[20:IP(raw)[TCP].dataofs * 4]
    assert pkt.seg_len == 5 and pkt.ip_id == 7


@pytest.mark.parametrize("flags,payload", [("S", b""), ("SA", b""), ("PA", b"x" * 1000),
                                           ("FA", b"bye"), ("R", b"")])
def test_unchanged_packet_rebuilds_byte_for_byte(flags: str, payload: bytes) -> None:
    raw = craft(flags, payload)
    pkt = p.parse(raw)
    assert pkt is not None and pkt.to_bytes() == raw


def test_edits_get_correct_checksums_and_lengths() -> None:
    pkt = p.parse(craft("PA", b"abc"))
    assert pkt is not None
    edited = pkt.with_(seq=0xFFFFFFFF, payload=b"longer payload",
                       options=p.add_option(pkt.options, 69, b"\x20")).to_bytes()
    assert checksums_ok(edited)
    scapy = IP(edited)
    assert scapy.len == len(edited)
    assert scapy[TCP].seq == 0xFFFFFFFF and bytes(scapy[TCP].payload) == b"longer payload"
    assert (69, b"\x20") in scapy[TCP].options


def test_ip_options_are_kept() -> None:
    raw = bytes(IP(src="1.2.3.4", dst="5.6.7.8", options=[b"\x01\x01\x01\x00"]) /
                TCP(flags="S"))
    pkt = p.parse(raw)
    assert pkt is not None and len(pkt.ip_header) == 24
    assert pkt.to_bytes() == raw
    assert checksums_ok(pkt.with_(seq=5).to_bytes())


@pytest.mark.parametrize("raw", [
    bytes(IP(src="1.1.1.1", dst="2.2.2.2") / UDP(sport=1, dport=2) / (b"x" * 30)),
    bytes(IPv6() / TCP()),
    bytes(IP(flags="MF") / TCP() / b"frag"),
    bytes(IP(frag=10) / TCP()),
    b"\x45" + b"\0" * 10,
], ids=["udp", "ipv6", "more-fragments", "fragment-offset", "runt"])
def test_non_tcp_or_fragments_are_not_parsed(raw: bytes) -> None:
    assert p.parse(raw) is None


def test_truncated_data_offset_is_not_parsed() -> None:
    raw = bytearray(craft("S"))
    raw[32] = 0xF0  # data offset 60 bytes, longer than the segment
    assert p.parse(bytes(raw)) is None


def test_iter_options_is_lenient() -> None:
    opts = bytes([2, 4, 5, 0xB4, 1, 69, 3, 0x20, 0, 0, 0, 0])
    assert list(p.iter_options(opts)) == [(2, 0, 4), (1, 4, 5), (69, 5, 8), (0, 8, 12)]
    assert p.option_kinds(opts) == [2, 69]
    # Length 1 and a length running past the block end the walk as one malformed item.
    assert list(p.iter_options(bytes([1, 99, 1]))) == [(1, 0, 1), (99, 1, 3)]
    assert list(p.iter_options(bytes([8, 10, 0]))) == [(8, 0, 3)]


def test_add_option_copies_existing_bytes_and_pads_with_eol() -> None:
    opts = bytes([2, 4, 5, 0xB4, 1, 1, 4, 2, 0, 0, 0, 0])  # MSS, NOP, NOP, SACKOK, EOL pad
    assert p.add_option(opts, 69, b"\x20") == bytes(
        [2, 4, 5, 0xB4, 1, 1, 4, 2, 69, 3, 0x20, 0])
    with pytest.raises(ValueError, match="does not fit"):
        p.add_option(bytes([1] * 38), 69, b"\x20")
    assert len(p.add_option(bytes([1] * 36), 69, b"\x20")) == 40


def test_rewrite_sack_moves_every_edge_and_nothing_else() -> None:
    sack = bytes([1, 1, 5, 18]) + (100).to_bytes(4, "big") + (200).to_bytes(4, "big") + \
        (5).to_bytes(4, "big") + (10).to_bytes(4, "big")
    ts = bytes([1, 1, 8, 10]) + bytes(range(8))
    out = p.rewrite_sack(ts + sack, -10)
    assert out[:12] == ts
    edges = [int.from_bytes(out[16 + 4 * i:20 + 4 * i], "big") for i in range(4)]
    assert edges == [90, 190, 0xFFFFFFFB, 0]


def test_resets_swap_or_keep_addresses() -> None:
    pkt = p.parse(craft("PA", b"data", seq=500, ack=900))
    assert pkt is not None
    back = IP(p.reverse_reset(pkt, 900, 500))
    assert (back.src, back.dst, back[TCP].sport, back[TCP].dport) == (
        "10.0.2.2", "10.0.1.1", 5000, 40000)
    assert str(back[TCP].flags) == "RA" and back[TCP].seq == 900 and back[TCP].ack == 500
    fwd = IP(p.forward_reset(pkt, 500, 900))
    assert (fwd.src, fwd.dst, fwd[TCP].seq) == ("10.0.1.1", "10.0.2.2", 500)
    assert checksums_ok(p.reverse_reset(pkt, 1, 2)) and checksums_ok(p.forward_reset(pkt, 1, 2))


def test_sequence_arithmetic_wraps() -> None:
    assert p.seq_add(0xFFFFFFFF, 2) == 1
    assert p.seq_after(1, 0xFFFFFFFF) and not p.seq_after(0xFFFFFFFF, 1)
    assert internet_checksum(b"\x00\x01\xf2\x03\xf4\xf5\xf6\xf7") == 0x220D  # RFC 1071 example
