"""The ENO hook's packet logic without NFQUEUE: a raw segment in, a rewritten one (or None) out.

Theory of operation
-------------------
The hook process (hook.py) feeds ``HookEngine.handle`` every segment its iptables rules queue
(handshake-phase segments only, see rules.py) with the direction and a monotonic clock. The
engine keeps one ``Conn`` per connection end, keyed by (local ip, local port, remote ip, remote
port), each with an ``EnoNegotiator`` from the pure core, and applies what the core decides:

* outgoing SYN from an announced local port: a new active ``Conn``; the core's SYN-form option
  is appended (RFC 8547 §4.1, §4.4). Ports nobody announced pass untouched, so plain TCP
  applications on the same host are unaffected.
* incoming SYN to a registered listener port: a new passive ``Conn``; its outgoing SYN-ACK
  gets the core's answer (§4.5, §4.6). An incoming SYN that crosses our own SYN is a
  simultaneous open (§4.3) and goes to the existing ``Conn``.
* non-SYN segments: outgoing ones get ``45 02`` while the core says ENO is still owed (A's third
  segment and early data, §4.6); incoming ones are shown to the core until it has judged the
  first ACK segment (§4.6 rule 1).
* received SYN data is removed from the segment when the core says it MUST be discarded
  (§4.7), also for ports with ENO off (§4.7 applies "even when ENO has been disabled").

Kernel options (MSS, SACK-permitted, timestamps, window scale, TFO) are copied byte for byte:
only the ENO option is appended behind them and the checksums are recomputed (packet.py).
Anything the engine cannot read, or a core error, leaves the segment untouched and is counted;
nothing a peer sends can raise out of ``handle``.

Memory is bounded: entries expire ``expiry`` seconds after their last segment (results stay
readable until then), and beyond ``max_conns`` the least recently active entry is evicted.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from testbed.eno import fastopt
from testbed.eno.config import EnoConfig
from testbed.eno.constants import EMPTY_NON_SYN_ENO, KIND_NOP, MAX_TCP_OPTIONS_LEN
from testbed.eno.control import Result, Settings
from testbed.eno.errors import EnoError
from testbed.eno.events import (
    Aborted,
    EnoEvent,
    Fallback,
    FallbackReason,
    Negotiated,
    SynDataDiscarded,
)
from testbed.eno.negotiation import EnoNegotiator, State, Trigger, allowed_targets
from testbed.eno.packet import PacketError, Segment, parse_segment, with_options, without_payload

logger = logging.getLogger(__name__)

Key = tuple[str, int, str, int]  # local ip, local port, remote ip, remote port

# States in which an outgoing non-SYN segment still owes ENO (§4.6: until a non-SYN segment
# arrives), and in which an incoming non-SYN segment still decides something (§4.6 rule 1).
DUTY_OUT = frozenset({State.SYNACK_RECEIVED, State.ENABLED_ECHO})
DUTY_IN = frozenset({State.SYNACK_SENT, State.SIMUL_SYNACK_SENT, State.ENABLED_ECHO})
# A pretend-full options block: tells the core "no room" when ENO would push the packet past
# the MTU (the core then skips ENO, or falls back on A's first ACK, §4.4 / §4.6).
_NO_ROOM = bytes((KIND_NOP,)) * MAX_TCP_OPTIONS_LEN
_NON_SYN_ENO_WIRE = len(EMPTY_NON_SYN_ENO) + (-len(EMPTY_NON_SYN_ENO) % 4)


@dataclass
class Conn:
    """One connection end the hook follows."""

    key: Key
    negotiator: EnoNegotiator
    active: bool
    last: float
    syn_seq: int | None = None  # our SYN (or SYN-ACK) sequence number
    syn_len: int = 0  # data bytes in it (for syn_data_acked, §4.7)
    peer_isn: int | None = None
    peer_eno_after_fallback: bool = False
    error: str | None = None
    packets: int = 0


@dataclass
class _Listener:
    settings: Settings
    config: EnoConfig
    owner: object


@dataclass
class _Announcement:
    config: EnoConfig
    deadline: float


@dataclass
class HookEngine:
    """See the module docstring. ``on_outcome(key)`` is called when a connection's result is
    final (negotiated, fallback, aborted or a core error), so waiting readers can be answered."""

    expiry: float = 30.0
    max_conns: int = 65536
    mtu: int = 1500
    on_outcome: Callable[[Key], None] | None = None
    # Called before an outgoing SYN is judged unannounced: announcements are one-way messages
    # that may still sit in the control socket when the SYN they announce reaches the queue.
    drain_control: Callable[[], None] | None = None
    conns: OrderedDict[Key, Conn] = field(default_factory=OrderedDict)
    listeners: dict[int, _Listener] = field(default_factory=dict)
    announcements: dict[int, _Announcement] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    max_packets_per_conn: int = 0

    # -- registrations (control channel) -------------------------------------------

    def listen(self, port: int, settings: Settings, owner: object) -> None:
        current = self.listeners.get(port)
        if current is not None and current.owner is not owner:
            raise ValueError(f"port {port} is already registered by another application")
        self.listeners[port] = _Listener(settings, settings.eno_config(), owner)

    def unlisten(self, port: int, owner: object) -> bool:
        current = self.listeners.get(port)
        if current is None or current.owner is not owner:
            return False
        del self.listeners[port]
        return True

    def announce(self, port: int, settings: Settings, now: float, ttl: float) -> None:
        # Built here, off the packet path; the core refuses now what it would refuse later.
        self.announcements[port] = _Announcement(settings.eno_config(), now + ttl)

    def cancel(self, port: int) -> bool:
        return self.announcements.pop(port, None) is not None

    # -- queries ---------------------------------------------------------------------

    def result(self, key: Key) -> Result | None:
        conn = self.conns.get(key)
        return None if conn is None else result_of(conn)

    def stats(self) -> dict[str, object]:
        return {
            "counts": dict(self.counts),
            "fallback_reasons": dict(self.reasons),
            "table_size": len(self.conns),
            "listeners": len(self.listeners),
            "announcements": len(self.announcements),
            "max_packets_per_conn": self.max_packets_per_conn,
        }

    def expire(self, now: float) -> int:
        """Forget connections idle for ``expiry`` seconds and stale announcements."""
        gone = 0
        while self.conns:
            key, conn = next(iter(self.conns.items()))
            if now - conn.last < self.expiry:
                break
            del self.conns[key]
            gone += 1
        for port in [p for p, a in self.announcements.items() if a.deadline <= now]:
            del self.announcements[port]
            self.counts["announcements_expired"] += 1
        self.counts["expired"] += gone
        return gone

    # -- the packet path ------------------------------------------------------------

    def handle(self, raw: bytes, outgoing: bool, now: float) -> bytes | None:
        """The rewritten segment, or None to let ``raw`` through unchanged."""
        self.counts["packets"] += 1
        try:
            seg = parse_segment(raw)
        except PacketError:
            self.counts["unparsed"] += 1
            return None
        kind = ("synack" if seg.is_ack else "syn") if seg.is_syn else "ack"
        direction = "out" if outgoing else "in"
        self.counts[f"{kind}_{direction}"] += 1
        if kind == "ack" and seg.payload_len:
            self.counts[f"data_{direction}"] += 1
        if seg.is_rst:
            return self._pass("rst")
        if outgoing:
            key = (seg.src, seg.sport, seg.dst, seg.dport)
        else:
            key = (seg.dst, seg.dport, seg.src, seg.sport)
        conn = self.conns.get(key)
        if conn is not None:
            self._touch(conn, now)
        if outgoing:
            return self._outgoing(seg, kind, key, conn, now)
        return self._incoming(seg, kind, key, conn, now)

    def _touch(self, conn: Conn, now: float) -> None:
        conn.last = now
        conn.packets += 1
        self.max_packets_per_conn = max(self.max_packets_per_conn, conn.packets)
        self.conns.move_to_end(conn.key)

    def _pass(self, why: str) -> bytes | None:
        """Count a segment let through unchanged; returns None (no rewrite)."""
        self.counts[f"pass_{why}"] += 1
        return None

    def _forget(self, key: Key) -> None:
        if self.conns.pop(key, None) is not None:
            self.counts["replaced"] += 1

    def _new_conn(self, key: Key, config: EnoConfig, active: bool, now: float) -> Conn:
        if key not in self.conns and len(self.conns) >= self.max_conns:
            self.conns.popitem(last=False)
            self.counts["evicted"] += 1
        conn = Conn(key, EnoNegotiator(config, active=active), active, now)
        self.conns[key] = conn
        self._touch(conn, now)
        self.counts["conns"] += 1
        return conn

    def _outgoing(
        self, seg: Segment, kind: str, key: Key, conn: Conn | None, now: float
    ) -> bytes | None:
        if kind == "syn":
            if conn is None or not conn.active or conn.syn_seq != seg.seq:
                announced = self._take_announcement(seg.sport)
                if announced is None or announced.deadline <= now:
                    self._forget(key)  # a new connection reuses the 4-tuple: not ours now
                    return self._pass("unregistered")
                conn = self._new_conn(key, announced.config, True, now)
                conn.syn_seq, conn.syn_len = seg.seq, seg.payload_len
            return self._step(conn, Trigger.SEND_SYN, seg)
        if conn is None:
            return self._pass("unregistered")
        if kind == "synack":
            if conn.syn_seq is None:
                conn.syn_seq, conn.syn_len = seg.seq, seg.payload_len
            return self._step(conn, Trigger.SEND_SYNACK, seg)
        if conn.negotiator.state in DUTY_OUT:
            return self._step(conn, Trigger.SEND_ACK, seg)
        return self._pass("no_duty")

    def _take_announcement(self, port: int) -> _Announcement | None:
        announced = self.announcements.pop(port, None)
        if announced is None and self.drain_control is not None:
            self.drain_control()
            announced = self.announcements.pop(port, None)
        return announced

    def _incoming(
        self, seg: Segment, kind: str, key: Key, conn: Conn | None, now: float
    ) -> bytes | None:
        if kind == "syn":
            return self._incoming_syn(seg, key, conn, now)
        if conn is None:
            return self._pass("unregistered")
        acked = self._acks_our_syn_data(conn, seg)
        if kind == "synack":
            if conn.peer_isn is None:
                conn.peer_isn = seg.seq
            return self._step(conn, Trigger.RECV_SYNACK, seg, acked)
        state = conn.negotiator.state
        if state in DUTY_IN:
            return self._step(conn, Trigger.RECV_ACK, seg, acked)
        if state is State.DISABLED:
            self._watch_after_fallback(conn, seg)
            if acked:  # §4.7: our SYN data ACKed although ENO failed -> the core aborts
                return self._step(conn, Trigger.RECV_ACK, seg, acked)
        return self._pass("no_duty")

    def _incoming_syn(
        self, seg: Segment, key: Key, conn: Conn | None, now: float
    ) -> bytes | None:
        if conn is not None and (conn.active or conn.peer_isn == seg.seq):
            # Our SYN crossed the peer's (simultaneous open, §4.3) or the peer retransmitted.
            if conn.peer_isn is None:
                conn.peer_isn = seg.seq
            return self._step(conn, Trigger.RECV_SYN, seg)
        listener = self.listeners.get(seg.dport)
        if listener is None:
            self._forget(key)
            if seg.payload_len and fastopt.scan(seg.options).enos:
                # §4.7: data of a SYN+ENO segment is discarded when ENO fails, "even when ENO
                # has been disabled by configuration"; the kernel then ACKs only the ISN.
                self.counts["syn_data_discarded"] += 1
                return without_payload(seg)
            return self._pass("unregistered")
        conn = self._new_conn(key, listener.config, False, now)
        conn.peer_isn = seg.seq
        return self._step(conn, Trigger.RECV_SYN, seg)

    @staticmethod
    def _acks_our_syn_data(conn: Conn, seg: Segment) -> bool:
        """The segment acknowledges data we sent in our SYN or SYN-ACK (§4.7)."""
        if not conn.syn_len or conn.syn_seq is None or not seg.is_ack:
            return False
        beyond = (seg.ack - conn.syn_seq - 1) & 0xFFFFFFFF
        return 0 < beyond <= conn.syn_len

    def _watch_after_fallback(self, conn: Conn, seg: Segment) -> None:
        outcome = conn.negotiator.outcome
        if (
            isinstance(outcome, Fallback)
            and outcome.reason is FallbackReason.NO_ENO_IN_ACK
            and b"\x45" in seg.options
            and fastopt.scan(seg.options).enos
        ):
            conn.peer_eno_after_fallback = True

    # -- driving the core ------------------------------------------------------------

    def _step(
        self, conn: Conn, trigger: Trigger, seg: Segment, acked: bool = False
    ) -> bytes | None:
        neg = conn.negotiator
        if not allowed_targets(neg.state, trigger):
            return self._pass(f"ignored_{trigger.value}")
        found = fastopt.scan(seg.options)
        try:
            option, events = self._drive(neg, trigger, seg, fastopt.core_view(found), acked)
        except EnoError as exc:
            conn.error = f"{trigger.value} in {neg.state.name}: {exc}"
            self.counts["core_errors"] += 1
            logger.warning("ENO hook: %s %s", conn.key, conn.error)
            self._notify(conn)
            return None
        strip = self._absorb(conn, events)
        if option is None and not strip:
            return None
        try:
            options = fastopt.append(seg.options, option, found) if option else seg.options
            new = without_payload(seg, options) if strip else with_options(seg, options)
        except (EnoError, PacketError) as exc:
            self.counts["rewrite_errors"] += 1
            logger.warning("ENO hook: cannot rewrite %s: %s", conn.key, exc)
            return None
        self.counts["modified"] += 1
        if option:
            self.counts["eno_added"] += 1
        return new

    def _drive(
        self, neg: EnoNegotiator, trigger: Trigger, seg: Segment, options: bytes, acked: bool
    ) -> tuple[bytes | None, list[EnoEvent]]:
        """Tell the core about the segment; ``options`` is the real block or its fastopt view,
        which every core reading answers alike."""
        size = seg.payload_len
        if trigger is Trigger.SEND_SYN:
            return neg.send_syn(options, size), neg.pop_events()
        if trigger is Trigger.SEND_SYNACK:
            return neg.send_synack(options, size), neg.pop_events()
        if trigger is Trigger.SEND_ACK:
            if len(seg.raw) + _NON_SYN_ENO_WIRE > self.mtu:
                options = _NO_ROOM  # the kernel sized this segment for the MTU already
            return neg.send_ack(options), neg.pop_events()
        if trigger is Trigger.RECV_SYN:
            return None, neg.receive_syn(options, size)
        if trigger is Trigger.RECV_SYNACK:
            return None, neg.receive_synack(options, size, syn_data_acked=acked)
        return None, neg.receive_ack(options, syn_data_acked=acked)

    def _absorb(self, conn: Conn, events: list[EnoEvent]) -> bool:
        """Count the events; True when this segment's SYN data must be discarded (§4.7)."""
        strip = False
        for event in events:
            if isinstance(event, Negotiated):
                self.counts["negotiated"] += 1
            elif isinstance(event, Fallback):
                self.counts["fallback"] += 1
                self.reasons[event.reason.value] += 1
            elif isinstance(event, Aborted):
                self.counts["aborted"] += 1
                self.reasons[f"aborted:{event.reason.value}"] += 1
            elif isinstance(event, SynDataDiscarded):
                self.counts["syn_data_discarded"] += 1
                strip = True
            if isinstance(event, Negotiated | Fallback | Aborted):
                self._notify(conn)
        return strip

    def _notify(self, conn: Conn) -> None:
        if self.on_outcome is not None:
            self.on_outcome(conn.key)


def result_of(conn: Conn) -> Result:
    """The control-channel view of one connection."""
    neg = conn.negotiator
    base = Result(
        local=(conn.key[0], conn.key[1]), remote=(conn.key[2], conn.key[3]),
        active=conn.active, state=neg.state.value, error=conn.error,
        peer_eno_after_fallback=conn.peer_eno_after_fallback, packets=conn.packets,
    )
    outcome = neg.outcome
    if isinstance(outcome, Negotiated):
        local = outcome.local_suboptions[-1].data if outcome.local_suboptions else None
        return _replace(
            base, outcome="negotiated", role=outcome.role.value, tep_id=outcome.tep_id,
            tep_byte=outcome.tep_byte, transcript=outcome.transcript.hex(),
            peer_a=outcome.peer_global.a, peer_b=outcome.peer_global.b,
            peer_data=outcome.peer_data.hex(), local_data=(local or b"").hex(),
        )
    if isinstance(outcome, Fallback):
        return _replace(base, outcome="fallback", reason=outcome.reason.value,
                        detail=outcome.detail)
    if isinstance(outcome, Aborted):
        fallback = outcome.fallback.value if outcome.fallback else None
        return _replace(base, outcome="aborted", reason=outcome.reason.value,
                        fallback=fallback, detail=outcome.detail)
    return base


def _replace(result: Result, **changes: object) -> Result:
    return replace(result, **changes)  # type: ignore[arg-type]
