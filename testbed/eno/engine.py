"""The ENO hook's packet logic without NFQUEUE or I/O: a raw segment in, ``Actions`` out.

Theory of operation
-------------------
The hook process (hook.py) feeds ``HookEngine.process`` every segment its iptables rules queue
(handshake-phase segments only, see rules.py) with the direction and a monotonic clock, and
performs the ``Actions`` it returns: the rewritten segment, the connections whose result just
became final (waiting control-channel readers), a conntrack entry to zero (ctzero.py), or
"read the control channel first, then ask again". The
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

Passive resumption (RFC 8548 §3.5): a listener's suboptions are fixed at registration, but the
application may push single-use *answers* (``answer``): a SYN whose suboption for a TEP carries
data beginning with a pushed key is answered with the pushed data for that TEP (a tcpcrypt
server's half of resume[i] and its nonce); every other SYN gets the listener's settings, i.e.
a fresh key exchange. An answer is taken by the first SYN that names it and expires after its
ttl. Pushes are one-way control messages, so pending ones are read before such a SYN is judged.
An active opener's ``Settings.expect`` makes a mismatching answer invalid (control.py).

Option space (RFC 8547 §4.4: 40 bytes): Linux's SYN and SYN-ACK options take 20 bytes (MSS 4,
SACK-permitted 2, timestamps 10, NOP + window scale 4), leaving 20 for ENO, and a tcpcrypt
resumption answer (global suboption, TEP byte, 9-byte identifier half, 8-byte nonce) needs 21.
When, and only when, ENO does not fit otherwise, the kernel's NOP padding is dropped (options
may start on any octet, RFC 9293 §3.1: alignment is a convenience); when an active opener's
offer still does not fit, its least preferred TEPs without data are left out (RFC 8548 §3.2:
they are optional, and a resumption suboption already offers its TEP fresh).

Kernel options (MSS, SACK-permitted, timestamps, window scale, TFO) are copied byte for byte:
only the ENO option is appended behind them and the checksums are recomputed
(testbed/packet.py); the one exception, NOP padding in a SYN that ENO would not fit beside, is
described above.
Anything the engine cannot read, or a core error, leaves the segment untouched and is counted;
nothing a peer sends can raise out of ``handle``.

Memory is bounded: entries expire ``expiry`` seconds after their last segment (results stay
readable until then), and beyond ``max_conns`` the least recently active entry is evicted.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass, field, replace

from testbed.eno import fastopt
from testbed.eno.config import EnoConfig
from testbed.eno.conn import Conn, Key, result_of
from testbed.eno.constants import EMPTY_NON_SYN_ENO, KIND_NOP, MAX_TCP_OPTIONS_LEN
from testbed.eno.control import Result
from testbed.eno.errors import EnoError
from testbed.eno.events import (
    Aborted,
    EnoEvent,
    Fallback,
    FallbackReason,
    Negotiated,
    SynDataAccepted,
    SynDataDiscarded,
)
from testbed.eno.listeners import Announcement, Listener, Registrations
from testbed.eno.negotiation import EnoNegotiator, State, Trigger, allowed_targets
from testbed.eno.selection import active_syn_option
from testbed.packet import PacketError, Segment, parse_segment, with_options, without_payload

__all__ = ["Actions", "Conn", "HookEngine", "Key", "result_of"]  # Conn, Key: conn.py

logger = logging.getLogger(__name__)


# States in which an outgoing non-SYN segment still owes ENO (§4.6: until a non-SYN segment
# arrives), and in which an incoming non-SYN segment still decides something (§4.6 rule 1).
DUTY_OUT = frozenset({State.SYNACK_RECEIVED, State.ENABLED_ECHO})
DUTY_IN = frozenset({State.SYNACK_SENT, State.SIMUL_SYNACK_SENT, State.ENABLED_ECHO})
# A pretend-full options block: tells the core "no room" when ENO would push the packet past
# the MTU (the core then skips ENO, or falls back on A's first ACK, §4.4 / §4.6).
_NO_ROOM = bytes((KIND_NOP,)) * MAX_TCP_OPTIONS_LEN
_NON_SYN_ENO_WIRE = len(EMPTY_NON_SYN_ENO) + (-len(EMPTY_NON_SYN_ENO) % 4)
_SYN_OUT = frozenset({Trigger.SEND_SYN, Trigger.SEND_SYNACK})
@dataclass(slots=True)
class Actions:
    """What the hook does for one segment; the engine itself does no I/O."""

    payload: bytes | None = None  # the rewritten segment (None: let it through unchanged)
    # Connections whose result became final (negotiated, fallback, aborted or a core error):
    # readers waiting on the control channel can be answered.
    decided: list[Key] = field(default_factory=list)
    # An announced SYN started this active connection while the SYN is held: zero a reopened
    # conntrack entry's counters before its verdict (ctzero.py).
    zero: Key | None = None
    # Nothing done yet: a SYN may depend on a control message still unread (announcements and
    # resumption answers are one-way). Read them, then call ``process`` with control_read.
    read_control: bool = False


_READ_CONTROL = Actions(read_control=True)


@dataclass
class HookEngine(Registrations):
    """See the module docstring."""

    expiry: float = 30.0
    max_conns: int = 65536
    mtu: int = 1500
    conns: OrderedDict[Key, Conn] = field(default_factory=OrderedDict)
    listeners: dict[int, Listener] = field(default_factory=dict)
    announcements: dict[int, Announcement] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    max_packets_per_conn: int = 0
    _now: float = 0.0  # time of the segment being handled (answers expire by it)
    _actions: Actions = field(default_factory=Actions)  # those of the segment being handled

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
        for listener in self.listeners.values():
            stale = [k for k, a in listener.answers.items() if a.deadline <= now]
            for k in stale:
                del listener.answers[k]
            self.counts["answers_expired"] += len(stale)
        self.counts["expired"] += gone
        return gone

    # -- the packet path ------------------------------------------------------------

    def handle(self, raw: bytes, outgoing: bool, now: float) -> bytes | None:
        """``process`` with every control message already read: the rewritten segment, or
        None to let ``raw`` through unchanged (the other actions are left out)."""
        return self.process(raw, outgoing, now, control_read=True).payload

    def process(
        self, raw: bytes, outgoing: bool, now: float, control_read: bool = False
    ) -> Actions:
        """The actions for one segment (see ``Actions``)."""
        try:
            seg = parse_segment(raw)
        except PacketError:
            self.counts["packets"] += 1
            self.counts["unparsed"] += 1
            return Actions()
        if not control_read and self._wants_control(seg, outgoing):
            return _READ_CONTROL
        self._actions = actions = Actions()
        actions.payload = self._segment(seg, outgoing, now)
        return actions

    def _wants_control(self, seg: Segment, outgoing: bool) -> bool:
        """A SYN the engine would judge by an announcement or a pushed answer it does not
        have yet (a retransmission or a crossing SYN of a followed connection needs none)."""
        if not seg.is_syn or seg.is_ack or seg.is_rst:
            return False
        if outgoing:
            conn = self.conns.get((seg.src, seg.sport, seg.dst, seg.dport))
            known = conn is not None and conn.active and conn.syn_seq == seg.seq
            return not known and seg.sport not in self.announcements
        listener = self.listeners.get(seg.dport)
        if listener is None or not listener.key_lengths:
            return False
        conn = self.conns.get((seg.dst, seg.dport, seg.src, seg.sport))
        return conn is None or not (conn.active or conn.peer_isn == seg.seq)

    def _segment(self, seg: Segment, outgoing: bool, now: float) -> bytes | None:
        self.counts["packets"] += 1
        self._now = now
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
        if active:
            self._actions.zero = key
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
                conn = self._new_conn(key, self._fit_offer(announced.config, seg), True, now)
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

    def _fit_offer(self, config: EnoConfig, seg: Segment) -> EnoConfig:
        """Leave out the least preferred TEPs without data while the SYN-form option would
        not fit beside the kernel's options, NOP padding dropped (module docstring)."""
        room = MAX_TCP_OPTIONS_LEN - len(_without_nops(seg.options))
        teps = list(config.offers)
        while _syn_option_len(replace(config, teps=tuple(teps))) > room:
            spare = [i for i, t in enumerate(teps) if t.data is None]
            if len(teps) < 2 or not spare:
                break  # nothing optional left: the core falls back (no_option_space)
            del teps[spare[-1]]
            self.counts["offers_trimmed"] += 1
        return config if len(teps) == len(config.offers) else replace(config, teps=tuple(teps))

    def _take_announcement(self, port: int) -> Announcement | None:
        return self.announcements.pop(port, None)

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
        # SYN-form ENO is judged against the options without NOP padding (module docstring).
        packed = _without_nops(seg.options) if trigger in _SYN_OUT else None
        view = fastopt.scan(packed) if packed is not None else found
        try:
            option, events = self._drive(neg, trigger, seg, fastopt.core_view(view), acked)
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
            options = seg.options
            if option and packed is not None and found.used + len(option) > MAX_TCP_OPTIONS_LEN:
                options = fastopt.append(packed, option, view)
                self.counts["nop_padding_dropped"] += 1
            elif option:
                options = fastopt.append(seg.options, option, found)
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
            return neg.send_syn(options, size)
        if trigger is Trigger.SEND_SYNACK:
            return neg.send_synack(options, size)
        if trigger is Trigger.SEND_ACK:
            if len(seg.raw) + _NON_SYN_ENO_WIRE > self.mtu:
                options = _NO_ROOM  # the kernel sized this segment for the MTU already
            return neg.send_ack(options)
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
                conn.syn_data = f"discarded:{event.reason.value}"
                strip = True
            elif isinstance(event, SynDataAccepted):
                conn.syn_data = "accepted"
            if isinstance(event, Negotiated | Fallback | Aborted):
                self._notify(conn)
        return strip

    def _notify(self, conn: Conn) -> None:
        self._actions.decided.append(conn.key)


def _syn_option_len(config: EnoConfig) -> int:
    try:
        return len(active_syn_option(config).encode())
    except EnoError:  # cannot be encoded at all: the core refuses it (no_option_space)
        return MAX_TCP_OPTIONS_LEN + 1


def _without_nops(raw: bytes) -> bytes:
    """The options before EOL with every NOP left out (RFC 9293 §3.1: NOPs only align);
    a block with a malformed tail is returned as it is."""
    found = fastopt.scan(raw)
    if found.malformed:
        return bytes(raw)
    out, i = bytearray(), 0
    while i < found.used:
        if raw[i] == KIND_NOP:
            i += 1
            continue
        out += raw[i : i + raw[i + 1]]
        i += raw[i + 1]
    return bytes(out)
