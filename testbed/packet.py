"""The packet layer: IPv4 and TCP headers read and written, the Internet checksum, the TCP
option walk. Pure functions over bytes, no I/O.

Every part of the project that reads or writes raw packets goes through this module: the ENO
hook's engine (testbed/eno/engine.py) through ``parse_segment`` / ``with_options``, the
middlebox models (middleboxes/packet.py) through ``parse_ipv4_tcp`` / ``build_tcp``, the pcap
reader (testbed/net/pcap.py) through ``ipv4_header`` / ``tcp_header`` / ``walk_options``, and
the RTT probe (testbed/net/rttprobe.py) through ``internet_checksum``. The one deliberate
shadow is testbed/eno/fastopt.py, the hook's one-pass option scan, which
tests/unit/test_eno_fastopt.py holds equal to the ENO core's reading.

Malformed input raises ``PacketError`` (a ``ValueError``); each caller turns it into what its
layer reports: the hook passes the packet untouched, a middlebox forwards it unchanged, the
pcap reader raises ``PcapError`` naming the record.

Checksums use the identity "16-bit one's complement sum == value mod 0xFFFF" (2**16 is 1
modulo 0xFFFF), so one ``int.from_bytes`` does the summing in C. NFQUEUE hands userspace fully
checksummed packets and the kernel marks a rewritten one CHECKSUM_NONE (docs/platform.md §3),
so what is computed here is what goes on the wire.

IPv4 only for whole packets: the testbed's networks run with IPv6 off and the hook's and the
boxes' rules are IPv4 rules. The pcap reader handles IPv6 headers itself.
"""

from __future__ import annotations

import mmap
import socket
import struct
from dataclasses import dataclass

IPV4_VERSION = 4
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPV4_MIN_HEADER = 20  # RFC 791 §3.1: IHL >= 5 words
TCP_MIN_HEADER = 20  # RFC 9293 §3.1: data offset >= 5 words
TCP_MAX_HEADER = 60  # data offset is 4 bits of 32-bit words
MAX_OPTIONS = TCP_MAX_HEADER - TCP_MIN_HEADER  # 40 bytes of option space
IP_FLAG_MF = 0x2000  # more fragments
IP_FRAG_OFFSET = 0x1FFF

FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
KIND_EOL, KIND_NOP = 0, 1  # RFC 9293 §3.2: the two one-byte options

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")
_U16 = struct.Struct("!H")
_PSEUDO_TAIL = struct.Struct("!BBH")


# What the header readers take: a packet, or a capture file mapped in memory.
Buffer = bytes | bytearray | memoryview | mmap.mmap


class PacketError(ValueError):
    """Bytes that are not the packet (or header) the caller asked to read or build."""


# -- checksum --------------------------------------------------------------------------


def ones_complement_sum(data: bytes) -> int:
    """RFC 1071 sum of big-endian 16-bit words (odd length padded with a zero byte)."""
    if len(data) % 2:
        data += b"\x00"
    total = int.from_bytes(data, "big") % 0xFFFF
    if total == 0 and any(data):
        return 0xFFFF  # one's complement has two zeros; a non-zero sum that folds to 0 is -0
    return total


def internet_checksum(*parts: bytes) -> int:
    """The Internet checksum (RFC 1071) of the concatenated parts."""
    return ~ones_complement_sum(b"".join(parts)) & 0xFFFF


def tcp_checksum(ip_header: bytes, tcp: bytes) -> int:
    """The TCP checksum over the IPv4 pseudo-header (RFC 9293 §3.1) and ``tcp``, whose own
    checksum field is taken as zero."""
    pseudo = ip_header[12:20] + _PSEUDO_TAIL.pack(0, IPPROTO_TCP, len(tcp))
    return internet_checksum(pseudo, tcp[:16], b"\x00\x00", tcp[18:])


# -- headers ---------------------------------------------------------------------------


# Header fields come back as plain tuples, not objects: the hook reads every handshake
# segment of its host through here, and building a NamedTuple or dataclass costs as much as
# the parse itself (measured: parse_segment 1.6x slower with NamedTuples).

# (ihl, total, ident, frag, proto, src, dst): header length in bytes, the total length field
# (0 for a TSO super-frame seen by a capture), identification, flags and fragment offset,
# protocol, and the two addresses as 4 bytes each (RFC 791 §3.1).
Ipv4 = tuple[int, int, int, int, int, bytes, bytes]
# (sport, dport, seq, ack, doff, reserved, flags, window, checksum, urgent): ``doff`` is the
# header length in bytes, options included; ``reserved`` the 4 bits before the flags
# (RFC 9293 §3.1).
Tcp = tuple[int, int, int, int, int, int, int, int, int, int]


def is_fragment(frag: int) -> bool:
    """More fragments follow, or this is not the first fragment (RFC 791 §3.1)."""
    return bool(frag & (IP_FLAG_MF | IP_FRAG_OFFSET))


def ipv4_header(buf: Buffer, start: int = 0, end: int | None = None) -> Ipv4:
    """The IPv4 header at ``buf[start:end]``; PacketError if it is not a whole one."""
    end = len(buf) if end is None else end
    if end - start < IPV4_MIN_HEADER:
        raise PacketError("IPv4 header truncated")
    vihl, _tos, total, ident, frag, _ttl, proto, _sum, src, dst = _IPV4.unpack_from(buf, start)
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != IPV4_VERSION or ihl < IPV4_MIN_HEADER:
        raise PacketError(f"bad IPv4 version/IHL byte 0x{vihl:02x}")
    if start + ihl > end:
        raise PacketError(f"IPv4 header truncated: IHL {ihl}, {end - start} bytes")
    return ihl, total, ident, frag, proto, src, dst


def tcp_header(buf: Buffer, start: int, end: int) -> Tcp:
    """The TCP header at ``buf[start:end]`` (``end``: where the segment ends)."""
    if end - start < TCP_MIN_HEADER:
        raise PacketError("TCP header truncated")
    sport, dport, seq, ack, off, flags, window, csum, urgent = _TCP.unpack_from(buf, start)
    doff = (off >> 4) * 4
    if doff < TCP_MIN_HEADER or start + doff > end:
        raise PacketError(f"bad TCP data offset {doff}")
    return sport, dport, seq, ack, doff, off & 0x0F, flags, window, csum, urgent


def parse_ipv4_tcp(raw: bytes, *, exact: bool = True) -> tuple[Ipv4, Tcp]:
    """One whole, unfragmented IPv4 TCP packet: its two headers. The packet ends at the IP
    total length (``ip[1]``).

    ``exact``: the IP total length must equal ``len(raw)`` (NFQUEUE hands over exactly one
    packet); otherwise bytes after the total length (link padding) are ignored.
    """
    n = len(raw)
    ip = ipv4_header(raw, 0, n)
    ihl, total, _ident, frag, proto = ip[:5]
    if proto != IPPROTO_TCP:
        raise PacketError(f"IP protocol {proto}, not TCP")
    if total != n if exact else not ihl <= total <= n:
        raise PacketError(f"IP total length {total}, {n} bytes")
    if is_fragment(frag):
        raise PacketError("IP fragment")
    return ip, tcp_header(raw, ihl, total)


def build_tcp(ip_header: bytes, tcp: Tcp, options: bytes, payload: bytes) -> bytes:
    """An IPv4 TCP packet: ``ip_header`` (options kept) with its total length and checksum
    set, then ``tcp`` (its data offset and checksum ignored: they are computed)."""
    if len(options) % 4 or len(options) > MAX_OPTIONS:
        raise PacketError(f"options block of {len(options)} bytes is not 0..40 in 4-byte units")
    sport, dport, seq, ack, _doff, reserved, flags, window, _sum, urgent = tcp
    off = ((TCP_MIN_HEADER + len(options)) // 4) << 4 | (reserved & 0x0F)
    segment = bytearray(_TCP.pack(
        sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, off, flags & 0xFF, window, 0, urgent,
    ) + options + payload)
    return _finish(bytearray(ip_header), segment)


def _finish(ip: bytearray, tcp: bytearray) -> bytes:
    """Set the IP total length and both checksums of ``ip + tcp``."""
    _U16.pack_into(ip, 2, len(ip) + len(tcp))
    ip[10:12] = b"\x00\x00"
    _U16.pack_into(ip, 10, internet_checksum(bytes(ip)))
    _U16.pack_into(tcp, 16, tcp_checksum(bytes(ip), bytes(tcp)))
    return bytes(ip + tcp)


# -- a received segment, read once and edited in place (the ENO hook) -------------------


@dataclass(frozen=True, slots=True)
class Segment:
    """A parsed view of one IPv4 TCP segment; ``raw`` is the packet as received."""

    raw: bytes
    ihl: int  # IP header length in bytes
    doff: int  # TCP header length in bytes
    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int

    @property
    def options(self) -> bytes:
        """The TCP options block exactly as received (padding included)."""
        return self.raw[self.ihl + TCP_MIN_HEADER : self.ihl + self.doff]

    @property
    def payload_len(self) -> int:
        return len(self.raw) - self.ihl - self.doff

    @property
    def is_syn(self) -> bool:
        return bool(self.flags & SYN)

    @property
    def is_ack(self) -> bool:
        return bool(self.flags & ACK)

    @property
    def is_rst(self) -> bool:
        return bool(self.flags & RST)


def parse_segment(raw: bytes) -> Segment:
    """Read the headers of an IPv4 TCP segment; PacketError for anything else."""
    (ihl, _total, _ident, _frag, _proto, src, dst), tcp = parse_ipv4_tcp(raw)
    sport, dport, seq, ack, doff, _reserved, flags = tcp[:7]
    return Segment(raw, ihl, doff, socket.inet_ntoa(src), socket.inet_ntoa(dst), sport, dport,
                   seq, ack, flags)


def checksums_ok(raw: bytes) -> bool:
    """Both checksums of an IPv4 TCP packet verify (for tests and sanity checks)."""
    seg = parse_segment(raw)
    ip, tcp = raw[: seg.ihl], raw[seg.ihl :]
    ip_ok = ones_complement_sum(ip) == 0xFFFF
    return ip_ok and tcp_checksum(ip, tcp) == _U16.unpack_from(tcp, 16)[0]


def _assemble(seg: Segment, options: bytes, payload: bytes) -> bytes:
    """Rebuild the packet with a new options block and payload: only the data offset, the
    lengths and the checksums change; every other header byte stays as received."""
    if len(options) % 4 or len(options) > MAX_OPTIONS:
        raise PacketError(f"options block of {len(options)} bytes is not 0..40 in 4-byte units")
    raw = seg.raw
    tcp = bytearray(raw[seg.ihl : seg.ihl + TCP_MIN_HEADER])
    tcp[12] = ((TCP_MIN_HEADER + len(options)) // 4) << 4 | (tcp[12] & 0x0F)
    tcp += options
    tcp += payload
    return _finish(bytearray(raw[: seg.ihl]), tcp)


def with_options(seg: Segment, options: bytes) -> bytes:
    """The segment with ``options`` as its TCP options block (payload unchanged)."""
    return _assemble(seg, options, seg.raw[seg.ihl + seg.doff :])


def without_payload(seg: Segment, options: bytes | None = None) -> bytes:
    """The segment with its payload removed, e.g. discarded SYN data (RFC 8547 §4.7)."""
    return _assemble(seg, seg.options if options is None else options, b"")


# -- TCP options -----------------------------------------------------------------------


# (kind, start, end, error): where one option of a block lies, ``raw[start:end]`` with its
# kind and length bytes; ``error`` is set on a malformed tail, which runs to the block's end.
OptionSpan = tuple[int, int, int, str | None]


def walk_options(raw: bytes) -> list[OptionSpan]:
    """Every option of a TCP options block, in order (RFC 9293 §3.2), read leniently.

    EOL ends the list: it is given spanning the padding after it. NOP is one byte. A kind
    without a length byte, or whose length is below 2 or runs past the block, is a malformed
    tail: one last span, with ``error`` saying why, to the end of the block. Strict readers
    raise on it; lenient ones keep its bytes verbatim. (A list, not a generator: it is on
    the hook's packet path, and for a block of a few options the list is twice as fast.)
    """
    out: list[OptionSpan] = []
    i, n = 0, len(raw)
    while i < n:
        kind = raw[i]
        if kind == KIND_EOL:
            out.append((kind, i, n, None))
            break
        if kind == KIND_NOP:
            out.append((kind, i, i + 1, None))
            i += 1
            continue
        if i + 1 >= n:
            out.append((kind, i, n, f"option kind {kind} at offset {i} has no length byte"))
            break
        length = raw[i + 1]
        if length < 2 or i + length > n:
            out.append((kind, i, n, f"option kind {kind} at offset {i} has length {length}, "
                                    f"{n - i} bytes remain"))
            break
        out.append((kind, i, i + length, None))
        i += length
    return out


def pad_options(options: bytes) -> bytes:
    """Pad with EOL (zero) bytes to a multiple of 4 (RFC 9293 §3.1)."""
    return options + bytes(-len(options) % 4)
