"""Packet models: the pure logic of every NFQUEUE middlebox, bytes in, decision out.

A ``PacketModel`` sees each queued packet as bytes with the time it arrived and returns a
``Decision``: accept (unchanged or with replacement bytes) or drop, plus packets to inject
before the verdict (forged RSTs, the pieces of a split segment). Timers (a coalescing
box's hold time) are pulled by the runner through ``next_deadline`` / ``poll``. Nothing
here touches a socket or a clock, so tests drive models with crafted packets and fixed
times; middleboxes/nfq.py is the thin shell that binds a queue and executes decisions.

Per-flow state lives in ``FlowTable`` (bounded, least recently used first out) keyed by the
unordered pair of endpoints, so both directions of a connection find the same state.
"""

from __future__ import annotations

import abc
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from middleboxes import packet as p

T = TypeVar("T")
Endpoint = tuple[str, int]


@dataclass(frozen=True)
class Decision:
    """What to do with one queued packet; ``inject`` goes out before the verdict."""

    accept: bool = True
    replacement: bytes | None = None
    inject: tuple[bytes, ...] = ()


ACCEPT = Decision()
DROP = Decision(accept=False)


@dataclass
class Counters:
    """seen / changed / dropped / reset are the Middlebox interface's four counters."""

    seen: int = 0
    changed: int = 0
    dropped: int = 0
    reset: int = 0  # flows killed with forged RSTs
    injected: int = 0  # packets the model created

    def as_dict(self) -> dict[str, int]:
        return {"seen": self.seen, "changed": self.changed, "dropped": self.dropped,
                "reset": self.reset, "injected": self.injected}


class PacketModel(abc.ABC):
    """Base class; subclasses declare ``name`` and ``defaults`` and implement ``handle``."""

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **params: Any) -> None:
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise ValueError(f"packet model {self.name} has no parameter(s) {sorted(unknown)}")
        self.params: dict[str, Any] = {**self.defaults, **params}
        self.counters = Counters()

    def process(self, data: bytes, now: float) -> Decision:
        """Count, then decide; the runner calls this for every queued packet."""
        self.counters.seen += 1
        decision = self.handle(data, now)
        if not decision.accept:
            self.counters.dropped += 1
        elif decision.replacement is not None and decision.replacement != data:
            self.counters.changed += 1
        self.counters.injected += len(decision.inject)
        return decision

    @abc.abstractmethod
    def handle(self, data: bytes, now: float) -> Decision: ...

    def next_deadline(self) -> float | None:
        """When ``poll`` next has something to release; None when nothing is held."""
        return None

    def poll(self, now: float) -> list[bytes]:
        """Packets whose hold time has passed, to inject now."""
        return []

    def flush(self) -> list[bytes]:
        """Everything still held, on shutdown (a box that stops forwards what it holds)."""
        return []


PACKET_MODELS: dict[str, type[PacketModel]] = {}


def packet_model(cls: type[PacketModel]) -> type[PacketModel]:
    if not cls.name or cls.name in PACKET_MODELS:
        raise ValueError(f"packet model name {cls.name!r} empty or taken")
    PACKET_MODELS[cls.name] = cls
    return cls


def create_model(name: str, params: dict[str, Any]) -> PacketModel:
    # Importing the modules that define models registers them.
    from middleboxes import resegment, synboxes, tlsboxes  # noqa: F401

    if name not in PACKET_MODELS:
        raise ValueError(f"unknown packet model {name!r}; known: {sorted(PACKET_MODELS)}")
    return PACKET_MODELS[name](**params)


class FlowTable(Generic[T]):
    """Per-connection state for both directions, at most ``limit`` flows (LRU evicted)."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._flows: OrderedDict[tuple[Endpoint, Endpoint], T] = OrderedDict()

    @staticmethod
    def key(pkt: p.TcpPacket) -> tuple[Endpoint, Endpoint]:
        a, b = (pkt.src, pkt.sport), (pkt.dst, pkt.dport)
        return (a, b) if a <= b else (b, a)

    def get(self, pkt: p.TcpPacket) -> T | None:
        k = self.key(pkt)
        state = self._flows.get(k)
        if state is not None:
            self._flows.move_to_end(k)
        return state

    def put(self, pkt: p.TcpPacket, state: T) -> T:
        k = self.key(pkt)
        self._flows[k] = state
        self._flows.move_to_end(k)
        while len(self._flows) > self.limit:
            self._flows.popitem(last=False)
        return state

    def pop(self, pkt: p.TcpPacket) -> T | None:
        return self._flows.pop(self.key(pkt), None)

    def drain(self) -> list[T]:
        """Every flow's state, oldest first; the table is empty afterwards."""
        states = list(self._flows.values())
        self._flows.clear()
        return states

    def get_or_create(self, pkt: p.TcpPacket, make: Callable[[], T]) -> T:
        state = self.get(pkt)
        return state if state is not None else self.put(pkt, make())

    def __len__(self) -> int:
        return len(self._flows)


class StreamCursor:
    """In-order bytes of one direction of a stream, from its sequence numbers.

    ``feed`` returns the bytes that became contiguous; retransmitted bytes are returned
    once only, and out-of-order pieces wait (bounded) until the hole is filled, as an
    inspecting box that reassembles does.
    """

    MAX_PENDING = 64

    def __init__(self) -> None:
        self.next_seq: int | None = None
        self._pending: dict[int, bytes] = {}

    def syn(self, isn: int) -> None:
        self.next_seq = p.seq_add(isn, 1)
        self._pending.clear()

    def feed(self, seq: int, payload: bytes) -> bytes:
        if not payload:
            return b""
        if self.next_seq is None:  # joined mid-stream: start at the first byte seen
            self.next_seq = seq
        if len(self._pending) < self.MAX_PENDING:
            self._pending[seq] = payload
        out = bytearray()
        progress = True
        while progress:
            progress = False
            for start, data in list(self._pending.items()):
                skip = (self.next_seq - start) & 0xFFFFFFFF
                if skip >= 0x80000000:  # starts after next_seq: still a hole
                    continue
                del self._pending[start]
                if skip < len(data):
                    out += data[skip:]
                    self.next_seq = p.seq_add(self.next_seq, len(data) - skip)
                progress = True
        return bytes(out)


def decision_for(original: bytes, pkt: p.TcpPacket | None) -> Decision:
    """Accept ``pkt`` rebuilt if it differs from ``original``, else accept unchanged."""
    if pkt is None:
        return ACCEPT
    rebuilt = pkt.to_bytes()
    return ACCEPT if rebuilt == original else Decision(replacement=rebuilt)


# -- isn-rewrite ------------------------------------------------------------------------


@dataclass
class _IsnFlow:
    client: Endpoint
    isn: int  # the client's own ISN: a retransmitted SYN must keep its offset
    offset: int


@packet_model
class IsnRewrite(PacketModel):
    """Shift the client's sequence space by a per-flow offset; translate the server's ACKs.

    The client's SYN opens a flow and draws its offset (``offset`` 0 = random from the
    seeded generator). Client->server: seq += offset. Server->client: ack -= offset and
    every SACK block edge -= offset, because those name client sequence numbers. Nothing
    else is touched: options (timestamps, ENO, unknown kinds) pass byte for byte, which
    is what Honda et al. saw boxes do (docs/middlebox-evidence.md §1.1). Flows whose SYN the box
    did not see pass unchanged.
    """

    name = "isn-rewrite"
    defaults = {"offset": 0, "seed": 1}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.rng = random.Random(int(self.params["seed"]))
        self.flows: FlowTable[_IsnFlow] = FlowTable()

    def _draw(self) -> int:
        fixed = int(self.params["offset"]) & 0xFFFFFFFF
        return fixed or self.rng.randrange(1, 1 << 32)

    def handle(self, data: bytes, now: float) -> Decision:
        pkt = p.parse(data)
        if pkt is None:
            return ACCEPT
        if pkt.has(p.SYN) and not pkt.has(p.ACK):
            known = self.flows.get(pkt)
            if known is not None and known.isn == pkt.seq:
                flow = known
            else:
                flow = self.flows.put(pkt, _IsnFlow((pkt.src, pkt.sport), pkt.seq,
                                                    self._draw()))
        else:
            found = self.flows.get(pkt)
            if found is None:
                return ACCEPT
            flow = found
        if (pkt.src, pkt.sport) == flow.client:
            return decision_for(data, pkt.with_(seq=p.seq_add(pkt.seq, flow.offset)))
        back = -flow.offset
        changed = pkt.with_(options=p.rewrite_sack(pkt.options, back))
        if pkt.has(p.ACK):
            changed = changed.with_(ack=p.seq_add(pkt.ack, back))
        return decision_for(data, changed)


# -- tamper -----------------------------------------------------------------------------


@dataclass
class _TamperFlow:
    client: Endpoint
    isn: dict[Endpoint, int]  # each sender's initial sequence number, once its SYN was seen


@packet_model
class Tamper(PacketModel):
    """Flip one random bit in a data segment's payload with probability ``rate``.

    The TCP checksum is recomputed, so the receiver's TCP accepts the damage and only an
    end-to-end integrity check (a TEP's MAC, TLS records) can notice it. ``direction``
    (both, c2s, s2c; relative to the SYN sender) and ``port`` (0 = any) narrow the
    segments at risk; draws come from a generator seeded with ``seed``.

    ``skip`` spares the first ``skip`` bytes of each direction's byte stream, counted from
    the sender's SYN: a segment that holds only spared bytes takes no draw, and a flip in a
    segment that straddles the boundary lands past it. With ``skip`` set, only flows whose
    opening this box saw are at risk (elsewhere a byte's stream offset is unknown). A test
    uses it to aim the damage at what follows a handshake: a TLS ServerHello is plaintext,
    so a flip there fails the handshake with whatever alert the changed field calls for,
    where a flip in a protected record is always the record's bad MAC (RFC 8446 §5.2).
    """

    name = "tamper"
    defaults = {"rate": 0.1, "seed": 1, "direction": "both", "port": 0, "skip": 0}
    DIRECTIONS = ("both", "c2s", "s2c")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.params["direction"] not in self.DIRECTIONS:
            raise ValueError(f"tamper direction must be one of {self.DIRECTIONS}")
        self.rng = random.Random(int(self.params["seed"]))
        self.rate = float(self.params["rate"])
        self.skip = int(self.params["skip"])
        if self.skip < 0:
            raise ValueError(f"tamper skip must be >= 0, not {self.skip}")
        self.flows: FlowTable[_TamperFlow] = FlowTable()
        # Only a direction or a skip needs the flows' openings: otherwise no table per packet.
        self.tracks_flows = self.params["direction"] != "both" or self.skip > 0

    def _flow(self, pkt: p.TcpPacket) -> _TamperFlow | None:
        sender = (pkt.src, pkt.sport)
        if pkt.has(p.SYN) and not pkt.has(p.ACK):
            return self.flows.put(pkt, _TamperFlow(sender, {sender: pkt.seq}))
        flow = self.flows.get(pkt)
        if flow is not None and pkt.has(p.SYN):  # the SYN-ACK: the server's ISN
            flow.isn[sender] = pkt.seq
        return flow

    def _selected(self, pkt: p.TcpPacket, flow: _TamperFlow | None) -> bool:
        direction = self.params["direction"]
        if direction == "both":
            return True
        # Direction is only known for flows seen opening.
        return flow is not None and ((pkt.src, pkt.sport) == flow.client) == (direction == "c2s")

    def _first_byte(self, pkt: p.TcpPacket, flow: _TamperFlow | None) -> int | None:
        """Index of the payload's first byte that may be flipped; None: none may."""
        if not self.skip:
            return 0
        isn = flow.isn.get((pkt.src, pkt.sport)) if flow is not None else None
        if isn is None:
            return None
        # The SYN takes one sequence number: stream byte 0 has sequence number ISN + 1.
        start = (pkt.seq + (1 if pkt.has(p.SYN) else 0) - isn - 1) % 2**32
        first = max(0, self.skip - start)
        return first if first < len(pkt.payload) else None

    def handle(self, data: bytes, now: float) -> Decision:
        pkt = p.parse(data)
        port = int(self.params["port"])
        if pkt is None or (port and port not in (pkt.sport, pkt.dport)):
            return ACCEPT
        flow = self._flow(pkt) if self.tracks_flows else None
        if not pkt.payload or not self._selected(pkt, flow):
            return ACCEPT
        first = self._first_byte(pkt, flow)
        if first is None or self.rng.random() >= self.rate:
            return ACCEPT
        bit = first * 8 + self.rng.randrange((len(pkt.payload) - first) * 8)
        body = bytearray(pkt.payload)
        body[bit // 8] ^= 1 << (bit % 8)
        return decision_for(data, pkt.with_(payload=bytes(body)))


# -- add-option (a test and experiment tool, not a catalogue middlebox) ------------------


@dataclass
class _FirstAck:
    done: bool = False


@packet_model
class AddOption(PacketModel):
    """Append option ``kind`` with ``data`` (hex) to the selected outgoing segments.

    ``segments``: comma list of ``syn`` (SYN without ACK), ``synack``, ``ack`` (the first
    non-SYN segment of a connection this host opened) and ``all`` (every segment). Run on
    an endpoint's OUTPUT hook it makes kernel traffic carry an option such as TCP-ENO
    (kind 69, RFC 8547) so the stripping models can be shown working on real segments.
    """

    name = "add-option"
    defaults = {"kind": 69, "data": "", "segments": "syn"}
    SEGMENTS = ("syn", "synack", "ack", "all")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.kind = int(self.params["kind"])
        self.data = bytes.fromhex(str(self.params["data"]))
        self.segments = {s.strip() for s in str(self.params["segments"]).split(",") if s}
        if not self.segments <= set(self.SEGMENTS):
            raise ValueError(f"add-option segments must be from {self.SEGMENTS}")
        self.opened: FlowTable[_FirstAck] = FlowTable()

    def _wanted(self, pkt: p.TcpPacket) -> bool:
        if "all" in self.segments:
            return True
        if pkt.has(p.SYN):
            if pkt.has(p.ACK):
                return "synack" in self.segments
            self.opened.put(pkt, _FirstAck())
            return "syn" in self.segments
        state = self.opened.get(pkt)
        if state is None or state.done:
            return False
        state.done = True
        return "ack" in self.segments

    def handle(self, data: bytes, now: float) -> Decision:
        pkt = p.parse(data)
        if pkt is None or not self._wanted(pkt):
            return ACCEPT
        try:
            options = p.add_option(pkt.options, self.kind, self.data)
        except ValueError:
            return ACCEPT  # no room: the segment goes out as the kernel made it
        return decision_for(data, pkt.with_(options=options))


# -- cross-syns (a test and experiment tool, not a catalogue middlebox) ------------------


@dataclass
class _HeldSyn:
    sender: Endpoint
    data: bytes


@packet_model
class CrossSyns(PacketModel):
    """Hold a SYN until the SYN of the other direction of the same 4-tuple comes, then
    release both at once: a simultaneous open (RFC 9293 §3.5, "simultaneous connection
    synchronization") by construction.

    Two active openers' SYNs cross only when each reaches its peer while the peer's socket
    is in SYN-SENT. Timed from the endpoints, that needs both connect() calls within one
    one-way delay of each other, which a loaded machine does not promise (and a SYN
    retransmission keeps the two ends' offset). On a box between them, the second SYN finds
    the first held: both ends are in SYN-SENT by then, and each SYN arrives after its peer
    sent its own. A repeated SYN of the held side replaces the held copy (one goes out).
    ``port`` (0 = any) narrows the SYNs held. Run on a box's FORWARD queue; RFC 8547 §4.3
    (Figure 12) is the ENO case this exists for.
    """

    name = "cross-syns"
    defaults = {"port": 0}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.port = int(self.params["port"])
        self.held: FlowTable[_HeldSyn] = FlowTable()

    def handle(self, data: bytes, now: float) -> Decision:
        pkt = p.parse(data)
        if pkt is None or not pkt.has(p.SYN) or pkt.has(p.ACK):
            return ACCEPT
        if self.port and self.port not in (pkt.sport, pkt.dport):
            return ACCEPT
        sender = (pkt.src, pkt.sport)
        held = self.held.get(pkt)
        if held is None or held.sender == sender:
            self.held.put(pkt, _HeldSyn(sender, data))
            return DROP
        self.held.pop(pkt)
        return Decision(inject=(held.data,))

    def flush(self) -> list[bytes]:
        """A box that stops lets what it holds go (a lone SYN then opens as usual)."""
        return [held.data for held in self.held.drain()]
