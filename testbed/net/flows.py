"""TCP connections out of pcap segments: timelines, flights, retransmissions, streams.

Theory of operation
-------------------
``connections()`` groups the ``Segment`` objects of ``testbed.net.pcap`` by 4-tuple into
``Connection`` objects oriented from the SYN sender (client) to the server; a 4-tuple reused
by a new SYN becomes a new generation. A connection gives a ``timeline()`` of handshake and
teardown events, ``flights()`` (alternating-direction groups of segments that carry payload,
SYN, FIN or RST: what round trips are counted from), ``retransmissions()``, and reassembled
byte streams for ``payload_contains``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from testbed.net.pcap import Direction, IncompleteCaptureError, Segment, TcpFlag


@dataclass(frozen=True, slots=True, order=True)
class ConnKey:
    """A connection oriented client -> server; ``generation`` counts reuses of one 4-tuple."""

    client: str
    client_port: int
    server: str
    server_port: int
    generation: int = 0

    def __str__(self) -> str:
        gen = f"#{self.generation}" if self.generation else ""
        return f"{self.client}:{self.client_port}->{self.server}:{self.server_port}{gen}"


@dataclass(frozen=True, slots=True)
class ConnSegment:
    """A segment inside a connection: ``t`` is seconds since the first SYN."""

    index: int
    direction: Direction
    t: float
    segment: Segment


class EventKind(enum.StrEnum):
    SYN = "syn"
    SYN_RETRANSMIT = "syn_retransmit"
    SYNACK = "synack"
    SYNACK_RETRANSMIT = "synack_retransmit"
    FIRST_ACK = "first_ack"  # the client ACK completing the handshake, with or without data
    FIRST_DATA_C2S = "first_data_c2s"
    FIRST_DATA_S2C = "first_data_s2c"
    FIN_C2S = "fin_c2s"
    FIN_S2C = "fin_s2c"
    RST = "rst"  # the first RST in each direction


@dataclass(frozen=True, slots=True)
class Event:
    """A timeline event: ``index`` is the position in ``Connection.segments``."""

    kind: EventKind
    t: float
    index: int
    direction: Direction


@dataclass(frozen=True, slots=True)
class Flight:
    """Consecutive same-direction segments that carry payload, SYN, FIN or RST."""

    direction: Direction
    indices: tuple[int, ...]
    t_start: float
    t_end: float
    payload_len: int


@dataclass(frozen=True, slots=True)
class Retransmission:
    """A segment whose (direction, seq, seg_len) was already seen at ``original_index``."""

    index: int
    original_index: int
    direction: Direction
    seq: int
    seg_len: int
    t: float
    delay: float  # seconds since the original transmission


_SIGNIFICANT = TcpFlag.SYN | TcpFlag.FIN | TcpFlag.RST


@dataclass
class Connection:
    """The segments of one TCP connection, in capture order, oriented client -> server."""

    key: ConnKey
    t0: float  # absolute capture time of the first SYN (first segment if no SYN was seen)
    t0_ns: int  # the same in integer nanoseconds; relative times derive from it exactly
    segments: list[ConnSegment] = field(default_factory=list)

    def timeline(self) -> list[Event]:
        """Handshake, first data, FIN and RST events in capture order."""
        events: list[Event] = []
        firsts: set[tuple[str, Direction]] = set()

        def first(kind: str, cs: ConnSegment) -> str | None:
            """The kind if this is its first occurrence in cs.direction, else None."""
            if (kind, cs.direction) in firsts:
                return None
            firsts.add((kind, cs.direction))
            return kind

        for cs in self.segments:
            s, c2s = cs.segment, cs.direction == "c2s"
            kinds: list[str | None] = []
            if s.is_syn and not s.is_ack and c2s:
                kinds.append(first("syn", cs) or "syn_retransmit")
            elif s.is_syn and s.is_ack and not c2s:
                kinds.append(first("synack", cs) or "synack_retransmit")
            elif c2s and s.is_ack and not s.is_rst and ("synack", "s2c") in firsts:
                kinds.append(first("first_ack", cs))
            if s.payload_len:
                kinds.append(first(f"first_data_{cs.direction}", cs))
            if s.is_fin:
                kinds.append(first(f"fin_{cs.direction}", cs))
            if s.is_rst:
                kinds.append(first("rst", cs))
            events += [Event(EventKind(k), cs.t, cs.index, cs.direction) for k in kinds if k]
        return events

    def flights(self, until_ts: float | None = None, *, until_index: int | None = None
                ) -> list[Flight]:
        """Alternating-direction flights up to and including ``until_ts`` (seconds since the
        first SYN, the time base of ``Event.t``) or ``until_index``.

        Pure ACKs are ignored because they never make the peer wait: a round trip is one
        change of direction among segments that carry something (payload, SYN, FIN, RST).
        """
        flights: list[Flight] = []
        current: list[ConnSegment] = []
        for cs in self.segments:
            if until_ts is not None and cs.t > until_ts:
                break
            if until_index is not None and cs.index > until_index:
                break
            s = cs.segment
            if not s.payload_len and not s.flags & _SIGNIFICANT:
                continue
            if current and current[-1].direction != cs.direction:
                flights.append(_flight(current))
                current = []
            current.append(cs)
        if current:
            flights.append(_flight(current))
        return flights

    def retransmissions(self) -> list[Retransmission]:
        """Segments repeating an earlier (direction, seq, seg_len); pure ACKs never count."""
        seen: dict[tuple[Direction, int, int], ConnSegment] = {}
        out: list[Retransmission] = []
        for cs in self.segments:
            s = cs.segment
            if not s.seg_len:
                continue
            key = (cs.direction, s.seq, s.seg_len)
            orig = seen.setdefault(key, cs)
            if orig is not cs:
                out.append(Retransmission(cs.index, orig.index, cs.direction, s.seq, s.seg_len,
                                          cs.t, cs.t - orig.t))
        return out

    def stream_chunks(self, direction: Direction) -> list[bytes]:
        """The captured byte stream of one direction, reassembled by sequence number.

        Returns contiguous runs; a gap (a lost or snaplen-truncated segment) starts a new
        run. On overlap the first capture wins, as the receiver's stack would keep it.
        """
        base: int | None = None
        pieces: list[tuple[int, bytes]] = []
        for cs in self.segments:
            if cs.direction != direction:
                continue
            s = cs.segment
            data_seq = (s.seq + int(s.is_syn)) & 0xFFFFFFFF  # SYN data starts at ISN + 1
            if base is None:
                base = data_seq
            if s.payload:
                # Signed 32-bit distance from the base survives sequence wrap-around.
                rel = ((data_seq - base + 0x80000000) & 0xFFFFFFFF) - 0x80000000
                pieces.append((rel, s.payload))
        pieces.sort(key=lambda p: p[0])
        chunks: list[bytes] = []
        run, run_end = bytearray(), 0
        for rel, data in pieces:
            if run and rel > run_end:
                chunks.append(bytes(run))
                run = bytearray()
            if not run:
                run, run_end = bytearray(data), rel + len(data)
            elif rel + len(data) > run_end:
                run += data[run_end - rel :]
                run_end = rel + len(data)
        if run:
            chunks.append(bytes(run))
        return chunks


def _flight(members: list[ConnSegment]) -> Flight:
    return Flight(
        direction=members[0].direction,
        indices=tuple(cs.index for cs in members),
        t_start=members[0].t,
        t_end=members[-1].t,
        payload_len=sum(cs.segment.payload_len for cs in members),
    )


def payload_contains(conn: Connection, needle: bytes, *, direction: Direction | None = None
                     ) -> bool:
    """Whether ``needle`` occurs in the payload of ``conn``, also across segment boundaries.

    Searches the reassembled streams and every single payload (a retransmission may carry
    different bytes). Answering False is a claim about everything that crossed the wire, so
    it raises ``IncompleteCaptureError`` when some payload was cut by the snaplen.
    """
    if not needle:
        raise ValueError("needle must not be empty")
    directions: tuple[Direction, ...] = (direction,) if direction else ("c2s", "s2c")
    for d in directions:
        if any(needle in chunk for chunk in conn.stream_chunks(d)):
            return True
        if any(needle in cs.segment.payload for cs in conn.segments if cs.direction == d):
            return True
    cut = [cs.index for cs in conn.segments
           if cs.direction in directions and cs.segment.truncated]
    if cut:
        raise IncompleteCaptureError(
            f"{conn.key}: payload of segments {cut} was truncated by the snaplen; "
            "cannot prove the bytes are absent (capture with snaplen 0)"
        )
    return False


@dataclass
class _Group:
    """Segments of one 4-tuple incarnation while grouping."""

    segments: list[Segment] = field(default_factory=list)
    syn: tuple[str, int, int] | None = None  # (src, sport, seq) of the first SYN without ACK
    ended: bool = False  # saw FIN or RST


def _new_incarnation(group: _Group, seg: Segment) -> bool:
    """A SYN with a new ISN from the same client means the 4-tuple was reused."""
    if not seg.is_syn or seg.is_ack or not group.segments:
        return False
    if group.syn is None:
        return group.ended
    src, sport, seq = group.syn
    return (seg.src, seg.sport) == (src, sport) and seg.seq != seq


def _orient(group: _Group, generation: int) -> Connection:
    segs = group.segments
    client = next(((s.src, s.sport) for s in segs if s.is_syn and not s.is_ack), None)
    if client is None:  # the SYN was not captured: the SYN-ACK's receiver is the client
        client = next(((s.dst, s.dport) for s in segs if s.is_syn and s.is_ack), None)
    if client is None:  # mid-stream capture: the first sender is the best guess
        client = (segs[0].src, segs[0].sport)
    first = segs[0]
    server = (first.dst, first.dport) if (first.src, first.sport) == client else (
        first.src, first.sport)
    syn = next((s for s in segs if s.is_syn and not s.is_ack and (s.src, s.sport) == client),
               None)
    origin = syn if syn is not None else first
    key = ConnKey(client[0], client[1], server[0], server[1], generation)
    conn = Connection(key, origin.ts, origin.ts_ns)
    for i, s in enumerate(segs):
        direction: Direction = "c2s" if (s.src, s.sport) == client else "s2c"
        # Integer nanoseconds: a float epoch time only resolves about 0.24 us.
        conn.segments.append(ConnSegment(i, direction, (s.ts_ns - origin.ts_ns) / 1e9, s))
    return conn


def connections(segments: Iterable[Segment]) -> dict[ConnKey, Connection]:
    """Group TCP segments by 4-tuple into connections, in order of first appearance.

    A reused 4-tuple (a new SYN with a different ISN) becomes a new connection whose key has
    the next ``generation``.
    """
    open_groups: dict[tuple[tuple[str, int], tuple[str, int]], tuple[_Group, int]] = {}
    ordered: list[tuple[_Group, int]] = []
    for seg in segments:
        a, b = (seg.src, seg.sport), (seg.dst, seg.dport)
        pair = (a, b) if a <= b else (b, a)
        entry = open_groups.get(pair)
        if entry is None or _new_incarnation(entry[0], seg):
            entry = (_Group(), 0 if entry is None else entry[1] + 1)
            open_groups[pair] = entry
            ordered.append(entry)
        group = entry[0]
        group.segments.append(seg)
        if seg.is_syn and not seg.is_ack and group.syn is None:
            group.syn = (seg.src, seg.sport, seg.seq)
        group.ended = group.ended or seg.is_fin or seg.is_rst
    conns = (_orient(group, gen) for group, gen in ordered)
    return {conn.key: conn for conn in conns}
