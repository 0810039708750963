"""Kernel-like IPv4 TCP segments as raw bytes, for hook tests (built with scapy, then the
options block is put in byte for byte so tests control its exact layout)."""

from __future__ import annotations

from scapy.all import IP, TCP, Raw, raw  # type: ignore[attr-defined]

from testbed.eno.tcp_options import remove_eno
from testbed.packet import parse_segment, with_options

# What Linux puts in a SYN / SYN-ACK (MSS, SACK-permitted, timestamps, NOP, window scale: 20
# bytes) and in later segments (NOP, NOP, timestamps: 12 bytes).
KERNEL_SYN_OPTIONS = bytes.fromhex("020405b40402080a0000000100000000" "01030307")
KERNEL_ACK_OPTIONS = bytes.fromhex("0101080a0000000200000001")


def segment(src: tuple[str, int], dst: tuple[str, int], flags: str, seq: int, ack: int = 0,
            options: bytes | None = None, payload: bytes = b"") -> bytes:
    """One segment; ``options`` default to the kernel's for the segment's kind."""
    if options is None:
        options = KERNEL_SYN_OPTIONS if "S" in flags else KERNEL_ACK_OPTIONS
    pkt = IP(src=src[0], dst=dst[0], flags="DF") / TCP(
        sport=src[1], dport=dst[1], flags=flags, seq=seq, ack=ack, window=64240)
    if payload:
        pkt = pkt / Raw(payload)
    return with_options(parse_segment(raw(pkt)), options)


def strip_eno(packet: bytes) -> bytes:
    """What iptables TCPOPTSTRIP --strip-options 69 does: ENO becomes NOPs, length kept."""
    seg = parse_segment(packet)
    return with_options(seg, remove_eno(seg.options, keep_length=True))


def scapy_checksums_ok(packet: bytes) -> bool:
    """Checksums as scapy computes them independently of testbed.packet."""
    parsed = IP(packet)
    ip_sum, tcp_sum = parsed.chksum, parsed[TCP].chksum
    del parsed.chksum
    del parsed[TCP].chksum
    again = IP(raw(parsed))
    return bool(again.chksum == ip_sum and again[TCP].chksum == tcp_sum)
