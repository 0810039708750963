"""A fast, pure reader of classic pcap files (connection analysis over it: flows.py).

Theory of operation
-------------------
Measurements count handshake round trips and check what crossed the wire from the pcap
of the client interface (docs/architecture.md, the data path of one measurement). Two layers:

1. ``PcapReader`` walks a classic libpcap file (magic 0xa1b2c3d4 for microseconds,
   0xa1b23c4d for nanoseconds, either byte order) with precompiled ``struct`` formats over
   an mmap, and yields one frozen ``Segment`` per IPv4 or IPv6 TCP packet. Link types:
   EN10MB (1), RAW (101), LINUX_SLL (113), LINUX_SLL2 (276). scapy is deliberately not on
   this path: rdpcap took about 190 us per packet here against about 13 us for this reader,
   and it turns malformed headers into Raw layers instead of errors.
   Broken framing or headers raise ``PcapError`` with the file offset of the record. TCP
   options are parsed leniently (a middlebox observer must see what was on the wire, RFC
   9293 section 3.1): a bad option never raises, it sets ``Segment.options_error``.
   Packets that are not TCP, and IP fragments, are skipped and counted in ``ReadStats``.
2. ``testbed.net.flows`` groups the segments into connections.
"""

from __future__ import annotations

import enum
import mmap
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from testbed.packet import (
    IPPROTO_TCP,
    KIND_EOL,
    KIND_NOP,
    TCP_MIN_HEADER,
    PacketError,
    ipv4_header,
    is_fragment,
    tcp_header,
    walk_options,
)

MAGIC_MICRO = 0xA1B2C3D4
MAGIC_NANO = 0xA1B23C4D
MAGIC_PCAPNG = 0x0A0D0D0A

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
_VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
# IPv6 extension headers that may precede TCP; their length unit differs (RFC 8200 4.3-4.6).
_IPV6_EXT_8 = (0, 43, 60)  # hop-by-hop, routing, destination options: (len + 1) * 8
_IPV6_AH = 51  # authentication header: (len + 2) * 4 (RFC 4302 section 2.2)
_IPV6_FRAGMENT = 44

# A caplen beyond this is a corrupt record header, not a packet (BIG TCP frames stay < 1 MiB).
_MAX_CAPLEN = 64 * 1024 * 1024

_IPV6 = struct.Struct("!IHBB16s16s")
_U16 = struct.Struct("!H")

OptionKind = int
TcpOption = tuple[OptionKind, bytes]
Direction = Literal["c2s", "s2c"]
_IpInfo = tuple[int, int, str, str, int, int]  # version, proto, src, dst, l4 offset, ip end

# Known option kinds with a fixed total length (RFC 9293 3.2, RFC 7323, RFC 2018).
_FIXED_OPTION_LEN = {2: 4, 3: 3, 4: 2, 8: 10}


class PcapError(Exception):
    """The file is not a readable classic pcap, or a record in it is malformed."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        where = f" (at byte offset {offset})" if offset is not None else ""
        super().__init__(message + where)
        self.offset = offset


class IncompleteCaptureError(PcapError):
    """A question about payload bytes cannot be answered: some payload was not captured."""


class TcpFlag(enum.IntFlag):
    """TCP header flag bits (RFC 9293 3.1; AE from RFC 9768, formerly NS)."""

    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10
    URG = 0x20
    ECE = 0x40
    CWR = 0x80
    AE = 0x100


_FLAG_LETTERS = "FSRPAUEC"


@dataclass(frozen=True, slots=True)
class PcapHeader:
    """The global header of a classic pcap file."""

    version: tuple[int, int]
    snaplen: int
    linktype: int
    nanosecond: bool
    byte_order: Literal["<", ">"]


@dataclass(slots=True)
class ReadStats:
    """What the reader saw; skipped packets are counted so nothing vanishes silently."""

    records: int = 0
    segments: int = 0
    skipped_non_ip: int = 0
    skipped_non_tcp: int = 0
    skipped_fragments: int = 0


@dataclass(frozen=True, slots=True)
class Segment:
    """One TCP segment as captured. ``record`` is its 0-based record number in the file."""

    record: int
    ts: float
    ts_ns: int
    ip_version: int
    src: str
    sport: int
    dst: str
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    options_raw: bytes
    options: tuple[TcpOption, ...]
    options_error: str | None
    payload_len: int
    payload: bytes
    ip_header_len: int
    tcp_header_len: int

    @property
    def is_syn(self) -> bool:
        return bool(self.flags & TcpFlag.SYN)

    @property
    def is_ack(self) -> bool:
        return bool(self.flags & TcpFlag.ACK)

    @property
    def is_fin(self) -> bool:
        return bool(self.flags & TcpFlag.FIN)

    @property
    def is_rst(self) -> bool:
        return bool(self.flags & TcpFlag.RST)

    @property
    def is_psh(self) -> bool:
        return bool(self.flags & TcpFlag.PSH)

    @property
    def options_malformed(self) -> bool:
        return self.options_error is not None

    @property
    def seg_len(self) -> int:
        """Sequence space used: payload plus one each for SYN and FIN (RFC 9293 3.4)."""
        return self.payload_len + int(self.is_syn) + int(self.is_fin)

    @property
    def is_pure_ack(self) -> bool:
        """ACK without payload, SYN, FIN or RST: it never costs the peer a round trip."""
        significant = TcpFlag.SYN | TcpFlag.FIN | TcpFlag.RST
        return self.is_ack and self.payload_len == 0 and not self.flags & significant

    @property
    def truncated(self) -> bool:
        """True when the snaplen cut off part of the payload."""
        return len(self.payload) < self.payload_len

    @property
    def flag_str(self) -> str:
        """tcpdump-like letters, for logs and assertion messages: 'S', 'SA', 'FPA'..."""
        return "".join(c for i, c in enumerate(_FLAG_LETTERS) if self.flags & (1 << i))


def parse_options(raw: bytes) -> tuple[tuple[TcpOption, ...], str | None]:
    """Split TCP option bytes into (kind, data) pairs, leniently; returns (options, error).

    EOL and NOP are kept as (0, b"") and (1, b"") so that, for example, a middlebox that
    overwrote an option with NOPs stays visible. Parsing stops at the first structural error.
    """
    out: list[TcpOption] = []
    error: str | None = None
    for kind, start, end, malformed in walk_options(raw):
        if malformed is not None:
            return tuple(out), malformed
        if kind in (KIND_EOL, KIND_NOP):  # EOL: the rest is padding (RFC 9293 3.2)
            out.append((kind, b""))
            continue
        expected = _FIXED_OPTION_LEN.get(kind)
        if expected is not None and expected != end - start and error is None:
            error = (f"option kind {kind} at offset {start} has length {end - start}, "
                     f"expected {expected}")
        out.append((kind, bytes(raw[start + 2 : end])))
    return tuple(out), error


def options_of(segment: Segment, kind: int) -> list[bytes]:
    """The data of every option of ``kind`` in ``segment``, in wire order."""
    return [data for k, data in segment.options if k == kind]


class PcapReader:
    """Iterate the TCP segments of a classic pcap file (a path or the file's bytes).

    Use as a context manager (or call ``close``) to release the mmap of a path source.
    """

    def __init__(self, source: str | os.PathLike[str] | bytes) -> None:
        self._mmap: mmap.mmap | None = None
        self._buf: bytes | mmap.mmap
        if isinstance(source, bytes | bytearray | memoryview):
            self._buf = bytes(source)
        else:
            with open(source, "rb") as f:
                # mmap keeps multi-GB bulk-transfer captures out of the Python heap.
                if os.fstat(f.fileno()).st_size == 0:
                    self._buf = b""
                else:
                    self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                    self._buf = self._mmap
        try:
            self.header = _parse_global_header(self._buf)
        except PcapError:
            self.close()
            raise
        self.stats = ReadStats()
        order = self.header.byte_order
        self._record = struct.Struct(order + "IIII")
        self._frac_scale = 1e-9 if self.header.nanosecond else 1e-6
        self._ns_per_frac = 1 if self.header.nanosecond else 1000

    def close(self) -> None:
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None

    def __enter__(self) -> PcapReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[Segment]:
        buf, size, rec_hdr = self._buf, len(self._buf), self._record
        offset, record = 24, 0
        while offset < size:
            if offset + 16 > size:
                raise PcapError(f"record {record}: truncated record header", offset)
            sec, frac, caplen, origlen = rec_hdr.unpack_from(buf, offset)
            start = offset + 16
            if caplen > _MAX_CAPLEN or caplen > origlen:
                raise PcapError(
                    f"record {record}: corrupt lengths caplen={caplen} origlen={origlen}", offset
                )
            if start + caplen > size:
                raise PcapError(
                    f"record {record}: truncated data, caplen={caplen} but only "
                    f"{size - start} bytes left", offset,
                )
            self.stats.records += 1
            seg = self._decode(record, offset, start, start + caplen, origlen, sec, frac)
            if seg is not None:
                self.stats.segments += 1
                yield seg
            offset = start + caplen
            record += 1

    def _decode(
        self, record: int, offset: int, start: int, end: int, origlen: int, sec: int, frac: int
    ) -> Segment | None:
        buf = self._buf
        ethertype, l3 = _link_layer(buf, start, end, self.header.linktype, record, offset)
        # IP lengths of 0 mean "larger than 64 KiB" (BIG TCP/GSO): fall back to the wire length.
        wire_end = start + origlen
        if ethertype == ETH_P_IP:
            ip = _ipv4(buf, l3, end, wire_end, record, offset)
        elif ethertype == ETH_P_IPV6:
            ip = _ipv6(buf, l3, end, wire_end, record, offset)
        else:
            self.stats.skipped_non_ip += 1
            return None
        if ip is None:
            self.stats.skipped_fragments += 1
            return None
        if ip[1] != IPPROTO_TCP:
            self.stats.skipped_non_tcp += 1
            return None
        ts = sec + frac * self._frac_scale
        ts_ns = sec * 1_000_000_000 + frac * self._ns_per_frac
        return _tcp(buf, record, offset, ts, ts_ns, ip, l3, end)


def _parse_global_header(buf: bytes | mmap.mmap) -> PcapHeader:
    if len(buf) < 24:
        raise PcapError(f"file too short for a pcap header ({len(buf)} bytes)", 0)
    for order in ("<", ">"):
        magic, major, minor, _zone, _sigfigs, snaplen, network = struct.unpack_from(
            order + "IHHiIII", buf, 0
        )
        if magic in (MAGIC_MICRO, MAGIC_NANO):
            # Low 16 bits are the link type; upper bits carry FCS info (pcap spec 4).
            linktype = network & 0xFFFF
            if linktype not in (LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL,
                                LINKTYPE_LINUX_SLL2):
                raise PcapError(f"unsupported link type {linktype}", 20)
            return PcapHeader((major, minor), snaplen, linktype, magic == MAGIC_NANO, order)
    if struct.unpack_from("<I", buf, 0)[0] == MAGIC_PCAPNG:
        raise PcapError("pcapng is not supported; capture with tcpdump -w (classic pcap)", 0)
    raise PcapError(f"bad pcap magic {bytes(buf[:4]).hex()}", 0)


def _link_layer(
    buf: bytes | mmap.mmap, start: int, end: int, linktype: int, record: int, offset: int
) -> tuple[int, int]:
    """Return (ethertype, offset of the network header) for one record."""
    if linktype == LINKTYPE_RAW:
        if end <= start:
            raise PcapError(f"record {record}: empty raw IP packet", offset)
        version = buf[start] >> 4
        return {4: ETH_P_IP, 6: ETH_P_IPV6}.get(version, 0), start
    if linktype == LINKTYPE_LINUX_SLL2:
        need, type_at = 20, start  # protocol type is the first field of SLL2
    elif linktype == LINKTYPE_LINUX_SLL:
        need, type_at = 16, start + 14
    else:
        need, type_at = 14, start + 12
    if end - start < need:
        raise PcapError(f"record {record}: link header truncated ({end - start} bytes)", offset)
    ethertype = _U16.unpack_from(buf, type_at)[0]
    l3 = start + need
    while linktype == LINKTYPE_ETHERNET and ethertype in _VLAN_TPIDS:
        if l3 + 4 > end:
            raise PcapError(f"record {record}: VLAN tag truncated", offset)
        ethertype = _U16.unpack_from(buf, l3 + 2)[0]
        l3 += 4
    return ethertype, l3


def _ipv4(
    buf: bytes | mmap.mmap, l3: int, end: int, wire_end: int, record: int, offset: int
) -> _IpInfo | None:
    """Parse an IPv4 header; None for a fragment (no TCP header to read, or not first)."""
    try:
        ihl, total, _ident, frag, proto, src, dst = ipv4_header(buf, l3, end)
    except PacketError as exc:
        raise PcapError(f"record {record}: {exc}", offset) from None
    if total == 0:
        total = wire_end - l3
    if total < ihl:
        raise PcapError(f"record {record}: IPv4 total length {total}, IHL {ihl}", offset)
    if is_fragment(frag):
        return None
    return 4, proto, socket.inet_ntop(socket.AF_INET, src), socket.inet_ntop(
        socket.AF_INET, dst), l3 + ihl, l3 + total


def _ipv6(
    buf: bytes | mmap.mmap, l3: int, end: int, wire_end: int, record: int, offset: int
) -> _IpInfo | None:
    """Parse an IPv6 header and walk extension headers; None for a fragment."""
    if l3 + 40 > end:
        raise PcapError(f"record {record}: IPv6 header truncated", offset)
    vtf, plen, nxt, _hops, src, dst = _IPV6.unpack_from(buf, l3)
    if vtf >> 28 != 6:
        raise PcapError(f"record {record}: bad IPv6 version {vtf >> 28}", offset)
    ip_end = l3 + 40 + plen if plen else wire_end
    l4 = l3 + 40
    while nxt in _IPV6_EXT_8 or nxt == _IPV6_AH:
        if l4 + 2 > end:
            raise PcapError(f"record {record}: IPv6 extension header truncated", offset)
        hlen = (buf[l4 + 1] + 1) * 8 if nxt != _IPV6_AH else (buf[l4 + 1] + 2) * 4
        nxt, l4 = buf[l4], l4 + hlen
    if nxt == _IPV6_FRAGMENT:
        return None
    return 6, nxt, socket.inet_ntop(socket.AF_INET6, src), socket.inet_ntop(
        socket.AF_INET6, dst), l4, ip_end


def _tcp(
    buf: bytes | mmap.mmap, record: int, offset: int, ts: float, ts_ns: int,
    ip: _IpInfo, l3: int, end: int,
) -> Segment:
    version, _proto, src, dst, l4, ip_end = ip
    if l4 + TCP_MIN_HEADER > end:
        raise PcapError(f"record {record}: TCP header truncated (snaplen too small?)", offset)
    try:  # the data offset is checked against the IP length: the snaplen may cut the options
        sport, dport, seq, ack, thl, reserved, flag_byte, window, _sum, _urg = tcp_header(
            buf, l4, ip_end)
    except PacketError as exc:
        raise PcapError(f"record {record}: {exc}", offset) from None
    opt_end = l4 + thl
    options_raw = bytes(buf[l4 + TCP_MIN_HEADER : min(opt_end, end)])
    options, error = parse_options(options_raw)
    if opt_end > end:  # headers longer than the snaplen: keep what we have, say so
        error = f"options truncated by snaplen: {len(options_raw)} of {thl - 20} bytes"
    payload = bytes(buf[opt_end : min(ip_end, end)]) if opt_end < end else b""
    return Segment(
        record=record, ts=ts, ts_ns=ts_ns, ip_version=version,
        src=src, sport=sport, dst=dst, dport=dport, seq=seq, ack=ack,
        flags=((reserved & 1) << 8) | flag_byte, window=window,
        options_raw=options_raw, options=options, options_error=error,
        payload_len=ip_end - opt_end, payload=payload,
        ip_header_len=l4 - l3, tcp_header_len=thl,
    )


def read_segments(source: str | os.PathLike[str] | bytes) -> list[Segment]:
    """Every TCP segment of a pcap file, in file order."""
    with PcapReader(source) as reader:
        return list(reader)
