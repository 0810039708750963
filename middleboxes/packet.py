"""Raw IPv4/TCP bytes: parse, edit, rebuild with correct checksums. Pure, no I/O.

NFQUEUE hands userspace a complete, checksummed IPv4 packet (the kernel finishes
partial checksums and segments GSO before queueing: docs/platform.md
§3), and after ``set_payload`` the kernel sets CHECKSUM_NONE, so every packet a
model returns must carry correct IP and TCP checksums. Editing raw bytes instead of
re-encoding through scapy costs about 50 us instead of about 300 us per packet (docs/platform.md §3)
and, more important for a middlebox model, never re-encodes options it did not mean to
touch: the header and option bytes a model leaves alone go out byte for byte.

Only IPv4 is handled (the testbed's networks run with IPv6 off); ``parse`` returns None
for anything that is not an unfragmented IPv4 TCP segment and the runner passes those
through untouched.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace

FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
IPPROTO_TCP = 6
KIND_EOL, KIND_NOP, KIND_SACK = 0, 1, 5
MAX_OPTIONS = 40  # data offset is 4 bits of 32-bit words: 60 - 20 (RFC 9293 section 3.1)

Flow = tuple[str, int, str, int]  # (src ip, src port, dst ip, dst port)


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): one's complement of the one's complement sum."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


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
        """The packet on the wire: lengths, data offset and both checksums recomputed."""
        if len(self.options) % 4 or len(self.options) > MAX_OPTIONS:
            raise ValueError(f"TCP options must be a multiple of 4 up to 40, got "
                             f"{len(self.options)}")
        doff = (20 + len(self.options)) // 4
        tcp = struct.pack(
            "!HHIIBBHHH", self.sport, self.dport, self.seq & 0xFFFFFFFF,
            self.ack & 0xFFFFFFFF, (doff << 4) | (self.reserved & 0x0F), self.flags & 0xFF,
            self.window, 0, self.urgent,
        ) + self.options + self.payload
        total = len(self.ip_header) + len(tcp)
        head = bytearray(self.ip_header)
        head[2:4] = struct.pack("!H", total)
        head[10:12] = b"\0\0"
        head[10:12] = struct.pack("!H", checksum(bytes(head)))
        pseudo = head[12:20] + struct.pack("!BBH", 0, IPPROTO_TCP, len(tcp))
        tcp_sum = checksum(bytes(pseudo) + tcp)
        return bytes(head) + tcp[:16] + struct.pack("!H", tcp_sum) + tcp[18:]


def parse(data: bytes) -> TcpPacket | None:
    """Split an IPv4 TCP packet; None for other protocols, fragments and runts."""
    if len(data) < 40 or data[0] >> 4 != 4 or data[9] != IPPROTO_TCP:
        return None
    ihl = (data[0] & 0x0F) * 4
    total = int.from_bytes(data[2:4], "big")
    frag = int.from_bytes(data[6:8], "big")
    if ihl < 20 or total > len(data) or frag & 0x3FFF:  # MF set or offset non-zero
        return None
    tcp = data[ihl:total]
    if len(tcp) < 20:
        return None
    sport, dport, seq, ack, off, flags, window, _sum, urgent = struct.unpack(
        "!HHIIBBHHH", tcp[:20])
    doff = (off >> 4) * 4
    if doff < 20 or doff > len(tcp):
        return None
    return TcpPacket(
        ip_header=bytes(data[:ihl]), sport=sport, dport=dport, seq=seq, ack=ack,
        flags=flags, window=window, urgent=urgent, options=bytes(tcp[20:doff]),
        payload=bytes(tcp[doff:]), reserved=off & 0x0F,
    )


# -- options ---------------------------------------------------------------------------


def iter_options(options: bytes) -> Iterator[tuple[int, int, int]]:
    """(kind, start, end) of each option, read leniently as a middlebox does.

    EOL ends the list (the rest is padding); a length below 2 or running past the block
    ends it too, and the malformed tail is reported as one item of its own kind so a
    caller that rewrites options can keep it verbatim.
    """
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == KIND_EOL:
            yield kind, i, len(options)
            return
        if kind == KIND_NOP:
            yield kind, i, i + 1
            i += 1
            continue
        length = options[i + 1] if i + 1 < len(options) else 0
        if length < 2 or i + length > len(options):
            yield kind, i, len(options)
            return
        yield kind, i, i + length
        i += length


def option_kinds(options: bytes) -> list[int]:
    return [kind for kind, _, _ in iter_options(options) if kind not in (KIND_EOL, KIND_NOP)]


def pad_options(options: bytes) -> bytes:
    """Pad with EOL bytes to a multiple of 4 (RFC 9293 section 3.1)."""
    return options + b"\0" * (-len(options) % 4)


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
