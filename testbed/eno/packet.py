"""Raw IPv4/TCP segment reading and editing for the ENO hook's hot path.

The hook sees every handshake-phase segment of its host (testbed/eno/hook.py), so this module
works on the bytes NFQUEUE hands over and never re-encodes what it does not change: the TCP
options block is replaced as a whole (``testbed.eno.tcp_options.append_eno`` builds it by
copying the kernel's options verbatim), and only the data offset, the IP total length and both
checksums are rewritten. Scapy would re-encode every option and costs about six times more per
packet (docs/platform.md §3).

Checksums use the identity "16-bit one's complement sum == value mod 0xFFFF" (2**16 is 1 modulo
0xFFFF), so one ``int.from_bytes`` does the summing in C. NFQUEUE hands userspace fully
checksummed packets and the kernel marks a rewritten one CHECKSUM_NONE, so what is computed here
is what goes on the wire.

IPv4 only: the testbed runs IPv4 (NetConfig.ipv6 defaults to off) and the hook's iptables rules
are IPv4 rules. Anything else raises ``PacketError`` and the hook passes it untouched.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

IPV4_VERSION = 4
IPPROTO_TCP = 6
IPV4_MIN_HEADER = 20  # RFC 791 §3.1: IHL >= 5 words
TCP_MIN_HEADER = 20  # RFC 9293 §3.1: data offset >= 5 words
TCP_MAX_HEADER = 60  # data offset is 4 bits of 32-bit words
IP_FLAG_MF = 0x2000  # more fragments
IP_FRAG_OFFSET = 0x1FFF

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

_IP_LEN = struct.Struct("!H")  # total length at IPv4 offset 2
_PORTS_SEQ_ACK = struct.Struct("!HHII")


class PacketError(ValueError):
    """Bytes that are not one complete, unfragmented IPv4 TCP segment."""


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
    n = len(raw)
    if n < IPV4_MIN_HEADER or raw[0] >> 4 != IPV4_VERSION:
        raise PacketError("not an IPv4 packet")
    ihl = (raw[0] & 0x0F) * 4
    if ihl < IPV4_MIN_HEADER or raw[9] != IPPROTO_TCP:
        raise PacketError("not TCP, or a bad IP header length")
    if _IP_LEN.unpack_from(raw, 2)[0] != n:
        raise PacketError(f"IP total length {_IP_LEN.unpack_from(raw, 2)[0]} != {n} bytes")
    if _IP_LEN.unpack_from(raw, 6)[0] & (IP_FLAG_MF | IP_FRAG_OFFSET):
        raise PacketError("IP fragment")
    if n < ihl + TCP_MIN_HEADER:
        raise PacketError("truncated TCP header")
    doff = (raw[ihl + 12] >> 4) * 4
    if doff < TCP_MIN_HEADER or ihl + doff > n:
        raise PacketError(f"bad TCP data offset {doff}")
    sport, dport, seq, ack = _PORTS_SEQ_ACK.unpack_from(raw, ihl)
    return Segment(
        raw=raw, ihl=ihl, doff=doff,
        src=socket.inet_ntoa(raw[12:16]), dst=socket.inet_ntoa(raw[16:20]),
        sport=sport, dport=dport, seq=seq, ack=ack, flags=raw[ihl + 13],
    )


def ones_complement_sum(data: bytes) -> int:
    """RFC 1071 sum of big-endian 16-bit words (odd length padded with a zero byte)."""
    if len(data) % 2:
        data += b"\x00"
    total = int.from_bytes(data, "big") % 0xFFFF
    if total == 0 and any(data):
        return 0xFFFF  # one's complement has two zeros; a non-zero sum that folds to 0 is -0
    return total


def _checksum(*parts: bytes) -> int:
    return ~ones_complement_sum(b"".join(parts)) & 0xFFFF


def tcp_checksum(ip_header: bytes, tcp: bytes) -> int:
    """The TCP checksum over the IPv4 pseudo-header and ``tcp`` (its checksum field zeroed)."""
    pseudo = ip_header[12:20] + struct.pack("!BBH", 0, IPPROTO_TCP, len(tcp))
    return _checksum(pseudo, tcp[:16], b"\x00\x00", tcp[18:])


def checksums_ok(raw: bytes) -> bool:
    """Both checksums of an IPv4 TCP packet verify (for tests and sanity checks)."""
    seg = parse_segment(raw)
    ip, tcp = raw[: seg.ihl], raw[seg.ihl :]
    ip_ok = ones_complement_sum(ip) == 0xFFFF
    return ip_ok and tcp_checksum(ip, tcp) == struct.unpack_from("!H", tcp, 16)[0]


def _assemble(seg: Segment, options: bytes, payload: bytes) -> bytes:
    """Rebuild the packet with a new options block and payload; fix lengths and checksums."""
    if len(options) % 4 or len(options) > TCP_MAX_HEADER - TCP_MIN_HEADER:
        raise PacketError(f"options block of {len(options)} bytes is not 0..40 in 4-byte units")
    raw = seg.raw
    doff = TCP_MIN_HEADER + len(options)
    tcp = bytearray(raw[seg.ihl : seg.ihl + TCP_MIN_HEADER])
    tcp[12] = (doff // 4) << 4 | (tcp[12] & 0x0F)
    tcp += options
    tcp += payload
    ip = bytearray(raw[: seg.ihl])
    _IP_LEN.pack_into(ip, 2, seg.ihl + len(tcp))
    ip[10:12] = b"\x00\x00"
    _IP_LEN.pack_into(ip, 10, _checksum(bytes(ip)))
    _IP_LEN.pack_into(tcp, 16, tcp_checksum(bytes(ip), bytes(tcp)))
    return bytes(ip + tcp)


def with_options(seg: Segment, options: bytes) -> bytes:
    """The segment with ``options`` as its TCP options block (payload unchanged)."""
    return _assemble(seg, options, seg.raw[seg.ihl + seg.doff :])


def without_payload(seg: Segment, options: bytes | None = None) -> bytes:
    """The segment with its payload removed, e.g. discarded SYN data (RFC 8547 §4.7)."""
    return _assemble(seg, seg.options if options is None else options, b"")
