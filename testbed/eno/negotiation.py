"""The TCP-ENO negotiation state machine (RFC 8547 §4.2-§4.8), sans-IO.

Theory of operation
-------------------
One ``EnoNegotiator`` per connection end. The NFQUEUE hook (or a test) tells it about
every handshake segment, in the order this host sends or receives them, passing the raw
TCP options block (and the payload length for SYNs). Every call answers with its events:
outgoing calls return an ``Outgoing`` (the encoded ENO option the segment must carry, or
None, and the events sending it produced), incoming calls the events they produced: the one
outcome (``Negotiated``, ``Fallback`` or ``Aborted``) once it is known, and SYN-data
verdicts. ``pop_events`` returns what no call returned yet (the fallback of an end made with
ENO disabled).

    active opener (A):  CLOSED -send_syn-> SYN_SENT -receive_synack-> SYNACK_RECEIVED
                        -send_ack-> ENABLED_ECHO -receive_ack-> ENABLED
    passive opener (B): LISTEN -receive_syn-> SYN_RECEIVED -send_synack-> SYNACK_SENT
                        -receive_ack-> ENABLED
    simultaneous open:  SYN_SENT -receive_syn-> SIMUL_SYN_RECEIVED -send_synack->
                        SIMUL_SYNACK_SENT -receive_synack-> ENABLED_ECHO (or -receive_ack->
                        ENABLED when the peer's SYN-ACK was lost)

Any rule of §4.6 that disables encryption leads to DISABLED (or ABORTED in the optional
mandatory-encryption mode of §4.7, and for the §4.7 SYN-data aborts). Encryption is on
once this end has sent and received an ACK segment with ENO (§4.6): ENABLED_ECHO means
on, but ENO must still ride on every outgoing segment because no non-SYN segment has
arrived from the peer yet (§4.6, first paragraph); ENABLED means on and done.
The hook must therefore keep passing outgoing segments (A's first data, e.g. tcpcrypt
Init1) through ``send_ack`` while the state is ENABLED_ECHO, not only the handshake.

SYN data (§4.7) is judged here too, but sequence numbers are the hook's business: it
says whether a SYN-ACK or ACK acknowledges our SYN data (``syn_data_acked``) and acts
on ``SynDataDiscarded`` (drop the data, acknowledge only the ISN).

``TRANSITIONS`` (testbed/eno/transitions.py, re-exported here) lists, per state and trigger,
the states the trigger may lead to; every other combination is illegal and raises
``EnoStateError``, leaving the object in ERROR.
The state changes only in ``_set_state``, which checks the table and logs old -> new.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from testbed.eno.config import EnoConfig
from testbed.eno.errors import EnoError, EnoStateError, LocalProtocolError, known
from testbed.eno.events import (
    Aborted,
    AbortReason,
    DiscardReason,
    EnoEvent,
    Fallback,
    FallbackReason,
    Negotiated,
    Outcome,
    Outgoing,
    SynDataAccepted,
    SynDataDiscarded,
)
from testbed.eno.option import EnoOption, GlobalSuboption, encode_non_syn_eno
from testbed.eno.selection import (
    SynEno,
    active_syn_option,
    make_negotiated,
    negotiation_problem,
    passive_answer,
    passive_global,
    read_syn_eno,
    select_tep,
)
from testbed.eno.tcp_options import find_eno, nonempty_fastopen, option_space_left
from testbed.eno.transitions import (  # re-exported: the negotiator's table
    TRANSITIONS,
    State,
    Trigger,
    allowed_targets,
    check_transition,
)
from testbed.teps import machine
from testbed.teps.base import Role

logger = logging.getLogger(__name__)


Step = tuple[State, bytes | None]


Problem = tuple[FallbackReason, str]


class EnoNegotiator:
    """TCP-ENO for one end of one connection (see the module docstring)."""

    def __init__(self, config: EnoConfig, *, active: bool) -> None:
        if config.mandatory_encryption and not config.enabled:
            raise LocalProtocolError("mandatory encryption with ENO disabled can never connect")
        self.config = config
        self.active = active
        self._trigger = Trigger.DISABLE  # the trigger of the call under way (``_run``)
        self._boundary = machine.Boundary(failed=self._refusal, enter_error=self._enter_error,
                                          catch=(EnoError,))
        self._state = State.CLOSED if active else State.LISTEN
        self._events: list[EnoEvent] = []
        self._outcome: Outcome | None = None
        self._local: EnoOption | None = None  # our SYN-form option
        self._local_raw = b""
        self._peer: EnoOption | None = None  # the peer's SYN-form option
        self._peer_raw = b""
        self._role: Role | None = None
        self._chosen: Negotiated | None = None  # decided at the SYN exchange, reported later
        self._sent_syn_data = False  # we sent data in a SYN+ENO segment (§4.7)
        self._sent_syn_only_data = False  # ... and it was our SYN-only segment
        self._syn_retransmissions = 0  # of our SYN-only segment
        if not config.enabled:
            self._state = State.DISABLED
            self._record(Fallback(FallbackReason.DISABLED_BY_CONFIG, "ENO off for this connection"))

    # -- read-only view ------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def outcome(self) -> Outcome | None:
        return self._outcome

    @property
    def role(self) -> Role | None:
        """A or B once both SYN-form options are known and compatible (§4.3)."""
        return self._role

    @property
    def selected_tep(self) -> int | None:
        """The TEP the SYN exchange selected (§4.5), before encryption is actually enabled."""
        return self._chosen.tep_id if self._chosen else None

    @property
    def pending(self) -> Negotiated | None:
        """What the SYN exchange decided while no outcome is final yet (a passive opener
        before the first ACK segment, §4.6). A TEP whose SYN data was accepted (§4.7) may act
        on it at once; the outcome still decides, and a later fallback must abort."""
        return self._chosen if self._outcome is None else None

    @property
    def peer_global(self) -> GlobalSuboption | None:
        """The peer's global suboption, for the §4.2 "examine the peer's a bit" API."""
        return self._peer.global_suboption if self._peer else None

    @property
    def encryption_enabled(self) -> bool:
        return self._state in (State.ENABLED_ECHO, State.ENABLED)

    def pop_events(self) -> list[EnoEvent]:
        """Every event no call returned yet, oldest first (calls return their own; this is
        left with what the constructor recorded, ENO disabled by the configuration)."""
        events, self._events = self._events, []
        return events

    # -- outgoing segments ---------------------------------------------------------
    # Each returns the ENO option the segment must carry (None: send it plain) together with
    # the events sending it produced (A's Negotiated at its first ACK, a fallback, an abort).

    def send_syn(self, options: bytes = b"", payload_len: int = 0) -> Outgoing:
        """Our SYN-only is leaving."""
        return self._send(Trigger.SEND_SYN, lambda: self._on_send_syn(options, payload_len))

    def send_synack(self, options: bytes = b"", payload_len: int = 0) -> Outgoing:
        """Our SYN-ACK is leaving (passive opener, or simultaneous open)."""
        return self._send(Trigger.SEND_SYNACK,
                          lambda: self._on_send_synack(options, payload_len))

    def send_ack(self, options: bytes = b"", contents: bytes = b"") -> Outgoing:
        """A non-SYN segment is leaving. ``contents`` is TEP data for the non-SYN-form option
        (§4.1: empty unless the TEP defines it; §10: the TEP must authenticate it)."""
        return self._send(Trigger.SEND_ACK, lambda: self._on_send_ack(options, contents))

    def disable(self) -> list[EnoEvent]:
        """Stop using ENO before the handshake completes (§4.6 lets an active opener drop it
        between SYN retransmissions; any end may decide not to start); returns the fallback
        it produced (none when ENO was already off)."""
        self._run(Trigger.DISABLE, lambda: (self._on_disable(), None))
        return self.pop_events()

    # -- incoming segments ---------------------------------------------------------

    def receive_syn(self, options: bytes, payload_len: int = 0) -> list[EnoEvent]:
        """A SYN-only arrived (passive open, simultaneous open, or a retransmission)."""
        self._run(Trigger.RECV_SYN, lambda: (self._on_receive_syn(options), None))
        self._syn_data_verdict(options, payload_len)
        return self.pop_events()

    def receive_synack(
        self, options: bytes, payload_len: int = 0, syn_data_acked: bool = False
    ) -> list[EnoEvent]:
        """A SYN-ACK arrived; ``syn_data_acked``: it acknowledges data we sent in our SYN."""
        self._run(
            Trigger.RECV_SYNACK, lambda: (self._on_receive_synack(options, syn_data_acked), None)
        )
        self._syn_data_verdict(options, payload_len)
        return self.pop_events()

    def receive_ack(self, options: bytes, syn_data_acked: bool = False) -> list[EnoEvent]:
        """A non-SYN segment arrived; only the presence of ENO matters (§4.1).
        ``syn_data_acked``: it acknowledges data we sent in our SYN-ACK (§4.7)."""
        self._run(Trigger.RECV_ACK, lambda: (self._on_receive_ack(options, syn_data_acked), None))
        return self.pop_events()

    # -- the machinery -------------------------------------------------------------

    def _send(self, trigger: Trigger, step: Callable[[], Step]) -> Outgoing:
        option = self._run(trigger, step)
        return Outgoing(option, self.pop_events())

    def _run(self, trigger: Trigger, step: Callable[[], Step]) -> bytes | None:
        """Every call goes through the error boundary (testbed/teps/machine.py): a trigger
        the table does not allow, or an EnoError from the step, leaves the negotiator in
        ERROR."""
        self._trigger = trigger
        with self._boundary:
            target, result = step()
        self._set_state(trigger, target)
        return result

    def _refusal(self) -> EnoStateError | None:
        trigger = self._trigger
        if TRANSITIONS[self._state].get(trigger):
            return None
        old = self._state
        self._set_state(trigger, State.ERROR)
        return EnoStateError(f"{trigger.value} is not allowed in state {old.name}")

    def _enter_error(self) -> None:
        self._set_state(self._trigger, State.ERROR)

    def _set_state(self, trigger: Trigger, new: State) -> None:
        old = self._state
        if new is not State.ERROR:
            check_transition(old, trigger, new)
        if new is not old:
            logger.debug("ENO %s: %s -> %s on %s", self._side(), old.name, new.name, trigger.value)
        self._state = new

    def _side(self) -> str:
        return "active" if self.active else "passive"

    def _record(self, event: EnoEvent) -> None:
        if isinstance(event, Negotiated | Fallback | Aborted):
            self._outcome = event
        self._events.append(event)

    def _fail(self, reason: FallbackReason, detail: str = "") -> State:
        """§4.6: disable encryption and stop sending ENO (or abort in mandatory mode)."""
        logger.info("ENO %s falls back: %s %s", self._side(), reason.value, detail)
        if self.config.mandatory_encryption:
            self._record(Aborted(AbortReason.MANDATORY_ENCRYPTION, reason, detail))
            return State.ABORTED
        self._record(Fallback(reason, detail))
        return State.DISABLED

    def _abort(self, reason: AbortReason, fallback: FallbackReason | None, detail: str) -> State:
        logger.info("ENO %s aborts: %s %s", self._side(), reason.value, detail)
        self._record(Aborted(reason, fallback, detail))
        return State.ABORTED

    # -- outgoing handlers ---------------------------------------------------------

    def _outgoing_syn_problem(
        self, option: EnoOption, options: bytes, payload_len: int, syn_only: bool
    ) -> Problem | None:
        """Why this SYN cannot carry ENO: §4.7 (TFO, SYN data) or no room (§4.4)."""
        if nonempty_fastopen(options):
            return FallbackReason.TFO_CONFLICT, "a SYN+ENO MUST NOT carry a TFO cookie (§4.7)"
        if payload_len > 0:
            if option.syn_tep not in self.config.syn_data_teps:
                return FallbackReason.SYN_DATA_CONFLICT, "the SYN TEP defines no SYN data (§4.7)"
            if syn_only and not self.config.allow_syn_only_data:
                return FallbackReason.SYN_DATA_CONFLICT, "SYN-only data is off by default (§4.7)"
        needed, left = len(option.encode()), option_space_left(options)
        if needed > left:
            return FallbackReason.NO_OPTION_SPACE, f"ENO needs {needed} bytes, {left} left"
        return None

    def _on_send_syn(self, options: bytes, payload_len: int) -> Step:
        if self._state is State.DISABLED:
            return State.DISABLED, None
        if self._state is State.SYN_SENT:
            self._syn_retransmissions += 1
            limit = self.config.syn_retries_with_eno
            if limit is None or self._syn_retransmissions <= limit or self._sent_syn_data:
                return State.SYN_SENT, self._local_raw  # MUST NOT alter (§4.6)
            # The one exception an active opener has (§4.6): recover from a path that drops
            # SYNs bearing ENO. Config refuses this with mandatory encryption.
            detail = f"no answer to {limit + 1} SYN(s) with ENO; retransmitting without"
            return self._fail(FallbackReason.SYN_RETRANSMISSION, detail), None
        option = active_syn_option(self.config)
        problem = self._outgoing_syn_problem(option, options, payload_len, syn_only=True)
        if problem is not None:
            return self._fail(*problem), None
        self._local, self._local_raw = option, option.encode()
        self._sent_syn_data = self._sent_syn_only_data = payload_len > 0
        return State.SYN_SENT, self._local_raw

    def _on_send_synack(self, options: bytes, payload_len: int) -> Step:
        if self._state is State.DISABLED:
            # §4.6: after fallback no more ENO; a simultaneous opener MAY omit it from its SYN-ACK.
            return State.DISABLED, None
        if self._state in (State.SYNACK_SENT, State.SIMUL_SYNACK_SENT):
            return self._state, self._local_raw
        local = known(self._local, "our SYN-form option")  # set by receive_syn or send_syn
        problem = self._outgoing_syn_problem(local, options, payload_len, syn_only=False)
        if problem is not None:
            return self._fail(*problem), None
        self._sent_syn_data |= payload_len > 0
        sent = State.SYNACK_SENT if self._state is State.SYN_RECEIVED else State.SIMUL_SYNACK_SENT
        return sent, self._local_raw

    def _on_send_ack(self, options: bytes, contents: bytes) -> Step:
        if self._state not in (State.SYNACK_RECEIVED, State.ENABLED_ECHO):
            return self._state, None
        option = encode_non_syn_eno(contents)
        fits = len(option) <= option_space_left(options)
        if self._state is State.ENABLED_ECHO:
            if not fits:
                # Encryption is already on; the peer only checks its *first* ACK segment.
                logger.warning("ENO: no room for the non-SYN ENO option on a later segment")
            return State.ENABLED_ECHO, option if fits else None
        if not fits:
            return self._fail(FallbackReason.NO_OPTION_SPACE, "no room in the first ACK"), None
        # A has now sent and received an ACK segment with ENO: encryption MUST be on (§4.6).
        self._record(known(self._chosen, "the TEP the SYN exchange selected"))
        return State.ENABLED_ECHO, option

    # -- incoming handlers ---------------------------------------------------------
    # Helpers named *_problem return (reason, detail) or None and record nothing, so that a
    # segment produces exactly one outcome even when a §4.7 abort overrides the fallback.

    def _on_receive_syn(self, options: bytes) -> State:
        if self._state is State.DISABLED:
            return State.DISABLED
        seen = read_syn_eno(options, FallbackReason.NO_ENO_IN_SYN)
        if self._state is State.LISTEN:
            problem = self._fresh_problem(seen) or self._passive_problem()
            return self._fail(*problem) if problem else State.SYN_RECEIVED
        if self._state is State.SYN_SENT:  # the peer's SYN crossed ours: simultaneous open
            problem = self._fresh_problem(seen) or self._decide_problem()
            return self._fail(*problem) if problem else State.SIMUL_SYN_RECEIVED
        problem = self._repeat_problem(seen)  # a retransmitted peer SYN
        return self._fail(*problem) if problem else self._state

    def _fresh_problem(self, seen: SynEno) -> Problem | None:
        """The first SYN-form option from the peer: usable? (§4.1, §4.4, §4.6 rule 1)."""
        if seen.option is None:
            return seen.problem or FallbackReason.NO_ENO_IN_SYN, seen.detail
        self._peer, self._peer_raw = seen.option, seen.raw
        return None

    def _passive_problem(self) -> Problem | None:
        """Passive opener: choose the one TEP to answer with (§4.5) and build our option."""
        peer = known(self._peer, "the peer's SYN-form option")
        local_global = passive_global(self.config)
        probe = EnoOption.build([o.tep_id for o in self.config.offers], local_global)
        reason = negotiation_problem(probe, peer, self.config)
        if reason is not None:
            return reason, ""
        answer = passive_answer(self.config, peer)
        if answer is None:
            return FallbackReason.NO_COMMON_TEP, f"peer offered {peer.tep_ids}"
        self._local = EnoOption.build([answer], local_global)
        self._local_raw = self._local.encode()
        return self._decide_problem()

    def _decide_problem(self) -> Problem | None:
        """Both SYN-form options known: roles (§4.3) and the negotiated TEP (§4.5)."""
        mine = known(self._local, "our SYN-form option")
        theirs = known(self._peer, "the peer's SYN-form option")
        reason = negotiation_problem(mine, theirs, self.config)
        if reason is not None:
            return reason, ""
        role = Role.B if mine.global_suboption.b else Role.A
        a_opt, b_opt = (mine, theirs) if role is Role.A else (theirs, mine)
        chosen = select_tep(a_opt, b_opt, role, self.config)
        if chosen is None:
            return FallbackReason.NO_COMMON_TEP, f"ours {mine.tep_ids}, peer {b_opt.tep_ids}"
        self._role = role
        local, peer = (mine, self._local_raw), (theirs, self._peer_raw)
        self._chosen = make_negotiated(role, local, peer, chosen)
        return None

    def _repeat_problem(self, seen: SynEno) -> Problem | None:
        """A retransmitted peer SYN, or its simultaneous-open SYN-ACK, repeats the option."""
        if seen.problem is not None:
            return seen.problem, seen.detail
        if seen.raw != self._peer_raw:
            return FallbackReason.SYN_OPTION_CHANGED, f"{self._peer_raw.hex()} -> {seen.raw.hex()}"
        return None

    def _on_receive_synack(self, options: bytes, acked: bool) -> State:
        if self._state in (State.SYNACK_RECEIVED, State.ENABLED_ECHO, State.ENABLED):
            return self._state  # a retransmission after the first ACK segment: ignored
        seen = read_syn_eno(options, FallbackReason.NO_ENO_IN_SYNACK)
        if self._state is State.DISABLED:
            lost = self._outcome.reason if isinstance(self._outcome, Fallback) else None
            return self._syn_data_abort(seen.present, acked, lost) or State.DISABLED
        if self._state is State.SIMUL_SYNACK_SENT:
            problem = self._repeat_problem(seen)
        else:
            problem = self._fresh_problem(seen) or self._decide_problem()
        abort = self._syn_data_abort(seen.present, acked, problem[0] if problem else None)
        if abort is not None:
            return abort
        if problem is not None:
            return self._fail(*problem)
        if self._state is State.SYN_SENT:
            return State.SYNACK_RECEIVED
        # Simultaneous open: sent our SYN-ACK, received theirs, both with ENO (§4.6).
        self._record(known(self._chosen, "the TEP the SYN exchange selected"))
        return State.ENABLED_ECHO

    def _syn_data_abort(
        self, present: bool, acked: bool, lost: FallbackReason | None
    ) -> State | None:
        """§4.7: the two cases in which a sender of SYN data MUST abort the connection."""
        if not self._sent_syn_data:
            return None
        syn_tep = self._local.syn_tep if self._local else None
        if acked and (lost is not None or self.selected_tep != syn_tep):
            detail = f"SYN TEP {syn_tep} but negotiated {self.selected_tep} (§4.7)"
            return self._abort(AbortReason.SYN_DATA_MISINTERPRETED, lost, detail)
        if not present and self._sent_syn_only_data and not self.config.tolerate_unacked_syn_data:
            detail = "SYN-ACK without ENO after SYN-only data (§4.7)"
            return self._abort(AbortReason.SYN_DATA_UNCONFIRMED, lost, detail)
        return None

    def _on_receive_ack(self, options: bytes, acked: bool) -> State:
        if self._state in (State.ENABLED_ECHO, State.ENABLED):
            # Our SYN data, if any, was judged at the first ACK segment; later ones are plain.
            return State.ENABLED
        if self._state is State.DISABLED:
            lost = self._outcome.reason if isinstance(self._outcome, Fallback) else None
            abort = self._syn_data_abort(True, acked, lost) if acked else None
            return abort or State.DISABLED
        # SYNACK_SENT / SIMUL_SYNACK_SENT: the first ACK segment we receive MUST carry ENO
        # (§4.6 rule 1); non-SYN-form contents and repetitions are ignored (§4.1).
        problem = None if find_eno(options) else FallbackReason.NO_ENO_IN_ACK
        abort = self._syn_data_abort(True, acked, problem) if acked else None
        if abort is not None:
            return abort
        if problem is not None:
            return self._fail(problem, "first ACK segment without ENO")
        self._record(known(self._chosen, "the TEP the SYN exchange selected"))
        return State.ENABLED  # a non-SYN segment arrived, so no more ENO (§4.6)

    def _on_disable(self) -> State:
        if self._state is State.DISABLED:
            return State.DISABLED  # already off: nothing more to report
        return self._fail(FallbackReason.LOCAL_DISABLE, "disabled through the API")

    # -- SYN data (§4.7) -----------------------------------------------------------

    def _syn_data_verdict(self, options: bytes, payload_len: int) -> None:
        """Received SYN+ENO data: deliver or discard (and do not ACK) it, §4.7."""
        if payload_len <= 0 or not find_eno(options):
            return  # not a SYN+ENO segment with data: ENO has no say
        tep = self.selected_tep
        syn_tep = self._peer.syn_tep if self._peer else None
        if self._state in (State.DISABLED, State.ABORTED) or tep is None:
            reason = DiscardReason.ENO_FAILED
        elif nonempty_fastopen(options):
            reason = DiscardReason.CONFLICTING_OPTION
        elif syn_tep != tep:
            reason = DiscardReason.NOT_NEGOTIATED_TEP
        elif tep not in self.config.syn_data_teps:
            reason = DiscardReason.NO_SYN_DATA_DEFINED
        else:
            self._record(SynDataAccepted(tep))
            return
        self._record(SynDataDiscarded(reason))


__all__ = [
    "EnoNegotiator",
    "Outgoing",
    "State",
    "TRANSITIONS",
    "Trigger",
    "allowed_targets",
    "check_transition",
]
