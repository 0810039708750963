"""The middlebox models' packet: one IPv4 TCP segment as editable parts. Pure, no I/O.

Reading, building, checksums and the option walk are the packet layer's (testbed/packet.py);
this module adds what a model edits: ``TcpPacket`` (an immutable value a model copies with
changes), SACK edges rewritten by an offset, 32-bit sequence arithmetic, and forged resets.

NFQUEUE hands userspace a complete, checksummed IPv4 packet and, after ``set_payload``, the
kernel sets CHECKSUM_NONE (docs/platform.md §3), so ``to_bytes`` recomputes lengths and both
checksums. Raw bytes, not scapy: the header and option bytes a model leaves alone go out byte
for byte, and it costs about 50 us instead of about 300 us per packet (docs/platform.md §3).

Only IPv4 is handled (the testbed's networks run with IPv6 off); ``parse`` returns None
for anything that is not an unfragmented IPv4 TCP segment and the runner passes those
through untouched.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace

from testbed.packet import (  # noqa: F401  (the flags: models read them as p.SYN etc.)
    ACK,
    FIN,
    IPPROTO_TCP,
    KIND_EOL,
    KIND_NOP,
    MAX_OPTIONS,
    PSH,
    RST,
    SYN,
    TCP_MIN_HEADER,
    URG,
    PacketError,
    Tcp,
    build_tcp,
    pad_options,
    parse_ipv4_tcp,
    walk_options,
)

KIND_SACK = 5  # RFC 2018 §3

Flow = tuple[str, int, str, int]  # (src ip, src port, dst ip, dst port)


def _ip_str(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)


def ip_bytes(text: str) -> bytes:
    return bytes(int(part) for part in text.split("."))


@dataclass(frozen=True)
class TcpPacket:
    """One IPv4 TCP segment split into the parts a model edits.

    ``ip_header`` keeps every IP byte (options included) except that length, checksum
    and, when given, the identification are rewritten by ``to_bytes``.
    """

    ip_header: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    urgent: int
    options: bytes  # raw option bytes, a multiple of 4 long
    payload: bytes
    reserved: int = 0  # the 4 bits between data offset and flags (AE/reserved)

    @property
    def src(self) -> str:
        return _ip_str(self.ip_header[12:16])

    @property
    def dst(self) -> str:
        return _ip_str(self.ip_header[16:20])

    @property
    def flow(self) -> Flow:
        return (self.src, self.sport, self.dst, self.dport)

    @property
    def ip_id(self) -> int:
        return int.from_bytes(self.ip_header[4:6], "big")

    def has(self, flag: int) -> bool:
        return bool(self.flags & flag)

    @property
    def seg_len(self) -> int:
        """Sequence space the segment occupies: payload plus one each for SYN and FIN."""
        return len(self.payload) + int(self.has(SYN)) + int(self.has(FIN))

    def with_(self, **changes: object) -> TcpPacket:
        return replace(self, **changes)  # type: ignore[arg-type]

    def with_ip_id(self, ip_id: int) -> TcpPacket:
        head = self.ip_header[:4] + struct.pack("!H", ip_id & 0xFFFF) + self.ip_header[6:]
        return replace(self, ip_header=head)

    def to_bytes(self) -> bytes:
        """The packet on the wire: lengths, data offset and both checksums recomputed.

        Raises ValueError (the layer's PacketError) for an options block that is not 0..40
        bytes in 4-byte units."""
        tcp: Tcp = (self.sport, self.dport, self.seq, self.ack, 0, self.reserved, self.flags,
                    self.window, 0, self.urgent)
        return build_tcp(self.ip_header, tcp, self.options, self.payload)


def parse(data: bytes) -> TcpPacket | None:
    """Split an IPv4 TCP packet; None for other protocols, fragments and runts."""
    try:
        (ihl, end, *_), tcp = parse_ipv4_tcp(data, exact=False)
    except PacketError:
        return None
    sport, dport, seq, ack, doff, reserved, flags, window, _sum, urgent = tcp
    start = ihl + doff
    return TcpPacket(
        ip_header=bytes(data[:ihl]), sport=sport, dport=dport, seq=seq, ack=ack, flags=flags,
        window=window, urgent=urgent, options=bytes(data[ihl + TCP_MIN_HEADER : start]),
        payload=bytes(data[start:end]), reserved=reserved,
    )


# -- options ---------------------------------------------------------------------------


def iter_options(options: bytes) -> Iterator[tuple[int, int, int]]:
    """(kind, start, end) of each option, read leniently as a middlebox does: a malformed
    tail is one item of its own kind, so a caller that rewrites options keeps it verbatim."""
    for kind, start, end, _error in walk_options(options):
        yield kind, start, end


def option_kinds(options: bytes) -> list[int]:
    return [kind for kind, _, _ in iter_options(options) if kind not in (KIND_EOL, KIND_NOP)]


def add_option(options: bytes, kind: int, data: bytes) -> bytes:
    """Append one option after the existing ones (copied verbatim up to any EOL).

    Raises ValueError when it does not fit in the 40 bytes of option space.
    """
    kept = bytearray()
    for k, start, end in iter_options(options):
        if k == KIND_EOL:
            break
        kept += options[start:end]
    out = pad_options(bytes(kept) + bytes((kind, len(data) + 2)) + data)
    if len(out) > MAX_OPTIONS:
        raise ValueError(f"option {kind} does not fit: {len(out)} > {MAX_OPTIONS} bytes")
    return out


def rewrite_sack(options: bytes, delta: int) -> bytes:
    """Add ``delta`` (mod 2**32) to every edge of every SACK block (RFC 2018 section 3)."""
    out = bytearray(options)
    for kind, start, end in iter_options(options):
        if kind != KIND_SACK or (end - start - 2) % 8:
            continue
        for pos in range(start + 2, end, 4):
            edge = int.from_bytes(out[pos:pos + 4], "big")
            out[pos:pos + 4] = ((edge + delta) & 0xFFFFFFFF).to_bytes(4, "big")
    return bytes(out)


def seq_after(a: int, b: int) -> bool:
    """a > b in 32-bit sequence space (RFC 9293 section 3.4)."""
    return 0 < ((a - b) & 0xFFFFFFFF) < 0x80000000


def seq_add(a: int, n: int) -> int:
    return (a + n) & 0xFFFFFFFF


def reverse_reset(pkt: TcpPacket, seq: int, ack: int) -> bytes:
    """A RST+ACK from ``pkt``'s destination to its source, as an on-path box forges it."""
    addrs = pkt.ip_header[16:20] + pkt.ip_header[12:16]
    return _reset(addrs, pkt.dport, pkt.sport, seq, ack)


def forward_reset(pkt: TcpPacket, seq: int, ack: int) -> bytes:
    """A RST+ACK from ``pkt``'s source to its destination (the sender's address forged)."""
    return _reset(pkt.ip_header[12:20], pkt.sport, pkt.dport, seq, ack)


def _reset(addrs: bytes, sport: int, dport: int, seq: int, ack: int) -> bytes:
    """A RST+ACK with a minimal IPv4 header; ``addrs`` is source then destination."""
    head = bytearray(20)
    head[0] = 0x45
    head[8] = 64
    head[9] = IPPROTO_TCP
    head[12:20] = addrs
    return TcpPacket(bytes(head), sport, dport, seq, ack, RST | ACK, 0, 0, b"", b"").to_bytes()
