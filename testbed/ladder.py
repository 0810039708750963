"""What a ladder diagram shows: one arrow per segment of a connection, with its label.

Pure functions over the pcap reader's connections (testbed/net/pcap.py, flows.py); drawing
is in testbed/ladder_draw.py. Each arrow has the TCP flags, the ENO option (RFC 8547 §4.1:
SYN-form global suboption and TEP suboptions, or the non-SYN-form acknowledgement), and what
the payload carries: tcpcrypt Init1 / Init2 and frames (RFC 8548 §4.1, §4.2), TLS records
(ClientHello, ServerHello and the encrypted records that follow, RFC 8446 §5.1), data in a
SYN (TCP Fast Open) or TLS 0-RTT records ("early data"), otherwise application bytes.

Time is to scale. A capture sees each segment at one place (the client's interface); the
other end of its arrow is placed half the SYN/SYN-ACK round trip away, or at the time the
server-side capture saw the same segment when one is given (same host clock, exact).
"""

from __future__ import annotations

import struct
import textwrap
from dataclasses import dataclass, field

from testbed.eno.option import GlobalSuboption, parse_eno_lenient
from testbed.net.flows import Connection, ConnSegment
from testbed.net.pcap import Direction, Segment

ENO_KIND, EXPERIMENT_KIND, ENO_EXID = 69, 253, 0x454E
TEP_SHORT = {0x20: "eno-test", 0x21: "tcpcrypt-P256", 0x22: "tcpcrypt-P521",
             0x23: "tcpcrypt-X25519", 0x24: "tcpcrypt-X448", 0x30: "TLS"}
TCPCRYPT_TEPS = frozenset({0x21, 0x22, 0x23, 0x24})
TLS_TEP = 0x30
INIT_MAGICS = {0x15101A0E: "Init1", 0x097105E0: "Init2"}  # RFC 8548 §4.3 Table 1
TLS_HANDSHAKE = {1: "ClientHello", 2: "ServerHello", 4: "NewSessionTicket"}
TLS_TYPES = {20: "ChangeCipherSpec", 21: "Alert", 22: "Handshake", 23: "encrypted record"}
FLAG_NAMES = (("S", "SYN"), ("F", "FIN"), ("R", "RST"), ("P", "PSH"), ("A", "ACK"))


@dataclass(frozen=True)
class Arrow:
    index: int
    direction: Direction
    t_send: float  # seconds since the first SYN
    t_recv: float
    label: str
    pure_ack: bool


@dataclass
class _Walker:
    """One direction's byte stream, cut into messages as segments arrive in order."""

    kind: str  # "tcpcrypt" | "tls" | "data"
    buf: bytearray = field(default_factory=bytearray)
    parsed: int = 0
    peer_spoke: bool = False  # the other direction has sent payload (TLS early data)
    pending: dict[int, bytes] = field(default_factory=dict)  # stream offset -> payload

    def feed(self, offset: int, payload: bytes) -> list[str]:
        """Names of the messages this segment completes; a segment ahead of a hole waits
        until the hole is filled (reordering, or a segment the capture missed)."""
        if offset > len(self.buf):
            self.pending[offset] = payload
            return [f"{len(payload)} B ahead of a hole (reordered or not captured)"]
        self.buf += payload[len(self.buf) - offset:]
        for start in sorted(self.pending):
            if start <= len(self.buf):
                self.buf += self.pending.pop(start)[len(self.buf) - start:]
        out: list[str] = []
        while True:
            found = self._next()
            if found is None:
                return out
            length, name = found
            self.parsed += length
            out.append(name)

    def _next(self) -> tuple[int, str] | None:
        rest = self.buf[self.parsed:]
        if self.kind == "tcpcrypt":
            return _tcpcrypt_message(rest, self.parsed == 0)
        if self.kind == "tls":
            return _tls_record(rest, early=not self.peer_spoke)
        return (len(rest), f"{len(rest)} B app data") if rest else None


def _tcpcrypt_message(rest: bytes | bytearray, at_start: bool) -> tuple[int, str] | None:
    if at_start and len(rest) >= 8 and struct.unpack("!I", rest[:4])[0] in INIT_MAGICS:
        magic, length = struct.unpack("!II", rest[:8])
        return (length, INIT_MAGICS[magic]) if len(rest) >= length else None
    if len(rest) < 3:
        return None
    clen = struct.unpack("!H", rest[1:3])[0]
    if len(rest) < 3 + clen:
        return None
    rekey = " rekey" if rest[0] & 1 else ""
    # clen = flags byte + data + 16-byte tag (§4.2); an urgent offset would take 2 more.
    return 3 + clen, f"frame{rekey} ({max(clen - 17, 0)} B)"


def _tls_record(rest: bytes | bytearray, early: bool) -> tuple[int, str] | None:
    if len(rest) < 5:
        return None
    ctype, length = rest[0], struct.unpack("!H", rest[3:5])[0]
    if len(rest) < 5 + length:
        return None
    name = TLS_TYPES.get(ctype, f"record type {ctype}")
    if ctype == 22 and length:
        name = TLS_HANDSHAKE.get(rest[5], f"Handshake type {rest[5]}")
    elif ctype == 23:
        name = f"{'0-RTT early data' if early else 'encrypted record'} ({length} B)"
    return 5 + length, name


def _flags(seg: Segment) -> str:
    names = [name for letter, name in FLAG_NAMES if letter in seg.flag_str]
    if names == ["SYN", "ACK"]:
        return "SYN-ACK"
    return ", ".join(n for n in names if n != "ACK" or len(names) == 1) or "-"


def eno_label(seg: Segment) -> tuple[str, list[int], bool] | None:
    """ENO in ``seg``: its label, TEP ids and whether the sender is B (b = 1)."""
    body = None
    for kind, data in seg.options:
        if kind == ENO_KIND:
            body = data
        elif kind == EXPERIMENT_KIND and data[:2] == ENO_EXID.to_bytes(2, "big"):
            body = data[2:]
    if body is None:
        return None
    if not seg.is_syn:
        return ("ENO", [], False)
    opt = parse_eno_lenient(body)
    glob = opt.explicit_global or GlobalSuboption()
    parts = [f"b={int(glob.b)}"] if opt.explicit_global else []
    for tep in opt.teps:
        extra = f"+{len(tep.data)}B" if tep.data is not None else ""
        parts.append(f"{TEP_SHORT.get(tep.tep_id, hex(tep.tep_id))}{extra}")
    bad = "" if opt.well_formed else " ILL-FORMED"
    return (f"ENO[{' '.join(parts)}]{bad}", list(opt.tep_ids), glob.b)


def negotiated_tep(conn: Connection) -> int | None:
    """RFC 8547 §4.5: the last TEP in B's SYN-form option that A offered."""
    offers: dict[bool, list[int]] = {}
    for cs in conn.segments:
        eno = eno_label(cs.segment) if cs.segment.is_syn else None
        if eno is not None:
            offers.setdefault(eno[2], eno[1])
    a, b = offers.get(False), offers.get(True)
    if not a or not b:
        return None
    return next((t for t in reversed(b) if t in a), None)


def _stream_kind(conn: Connection, tep: int | None) -> str:
    if tep in TCPCRYPT_TEPS:
        return "tcpcrypt"
    first = next((cs.segment.payload for cs in conn.segments if cs.segment.payload), b"")
    if tep == TLS_TEP or (len(first) > 1 and 20 <= first[0] <= 23 and first[1] == 3):
        return "tls"
    return "data"


def _one_way(conn: Connection) -> float:
    syn = next((cs.t for cs in conn.segments if cs.segment.is_syn and not cs.segment.is_ack),
               None)
    synack = next((cs.t for cs in conn.segments if cs.segment.is_syn and cs.segment.is_ack),
                  None)
    return (synack - syn) / 2 if syn is not None and synack is not None else 0.0


def _label(cs: ConnSegment, walkers: dict[Direction, _Walker], isn: dict[Direction, int]
           ) -> str:
    seg = cs.segment
    parts = [_flags(seg)]
    eno = eno_label(seg)
    if eno is not None:
        parts.append(eno[0])
    if seg.is_syn:
        isn[cs.direction] = seg.seq
    if seg.payload:
        walker = walkers[cs.direction]
        other: Direction = "s2c" if cs.direction == "c2s" else "c2s"
        walkers[other].peer_spoke = True
        start = (seg.seq - isn.get(cs.direction, seg.seq - 1) - 1 + int(seg.is_syn)) % 2**32
        names = walker.feed(start, seg.payload)
        text = "; ".join(names) if names else f"{len(seg.payload)} B (part)"
        if seg.is_syn:  # TCP Fast Open (RFC 7413)
            text = f"early data in SYN: {text}"
        parts.append(textwrap.fill(text, width=60))
    return " ".join(parts[:1]) + ("\n" + "\n".join(parts[1:]) if parts[1:] else "")


SegmentKey = tuple[str, int, int, int, int]  # direction, seq, ack, flags, payload length


def segment_key(direction: str, seg: Segment) -> SegmentKey:
    return (direction, seg.seq, seg.ack, seg.flags, seg.payload_len)


def arrows(conn: Connection, server_times: dict[SegmentKey, list[float]] | None = None
           ) -> list[Arrow]:
    """One Arrow per segment, in capture order. ``server_times`` maps a segment's key to the
    times the server-side capture saw segments with that key, in order (seconds since this
    connection's first SYN), for exact far ends."""
    used: dict[SegmentKey, int] = {}
    tep = negotiated_tep(conn)
    kind = _stream_kind(conn, tep)
    walkers: dict[Direction, _Walker] = {"c2s": _Walker(kind), "s2c": _Walker(kind)}
    isn: dict[Direction, int] = {}
    owd = _one_way(conn)
    out = []
    for cs in conn.segments:
        seg = cs.segment
        label = _label(cs, walkers, isn)
        key = segment_key(cs.direction, seg)
        seen = (server_times or {}).get(key, [])
        nth = used[key] = used.get(key, -1) + 1
        far = seen[nth] if nth < len(seen) else None
        if cs.direction == "c2s":
            t_send, t_recv = cs.t, far if far is not None else cs.t + owd
        else:
            t_send, t_recv = far if far is not None else cs.t - owd, cs.t
        out.append(Arrow(cs.index, cs.direction, t_send, t_recv, label, seg.is_pure_ack))
    return out
