"""The TCP-ENO negotiation's states, triggers and transition table (RFC 8547 §4.6, §4.7).

``TRANSITIONS`` lists, per state and trigger, the states the trigger may lead to; every other
combination is illegal (``check_transition`` raises ``EnoStateError``). The negotiator
(testbed/eno/negotiation.py) changes its state only through this table; the ENO hook's engine
(testbed/eno/engine.py) reads ``allowed_targets`` to tell a legal segment from one to refuse;
tests/unit/test_eno_transitions.py walks the whole table.
"""

from __future__ import annotations

import enum

from testbed.eno.errors import EnoStateError


class State(enum.Enum):
    CLOSED = "closed"  # active opener, nothing sent
    LISTEN = "listen"  # passive opener, nothing received
    SYN_SENT = "syn_sent"  # our SYN-only carried ENO
    SYN_RECEIVED = "syn_received"  # passive: peer SYN accepted, SYN-ACK not yet sent
    SYNACK_SENT = "synack_sent"  # passive: SYN-ACK with ENO sent, awaiting the first ACK
    SYNACK_RECEIVED = "synack_received"  # active: peer SYN-ACK accepted, our ACK not yet sent
    SIMUL_SYN_RECEIVED = "simul_syn_received"  # simultaneous open: peer SYN-only accepted
    SIMUL_SYNACK_SENT = "simul_synack_sent"  # simultaneous open: our SYN-ACK sent
    ENABLED_ECHO = "enabled_echo"  # encryption on, ENO still sent on every segment
    ENABLED = "enabled"  # encryption on, no more ENO needed
    DISABLED = "disabled"  # fallback to plain TCP (terminal)
    ABORTED = "aborted"  # the connection must be reset (terminal)
    ERROR = "error"  # this object was misused (terminal; every call raises)


class Trigger(enum.Enum):
    SEND_SYN = "send_syn"  # outgoing SYN-only
    RECV_SYN = "receive_syn"  # incoming SYN-only
    SEND_SYNACK = "send_synack"
    RECV_SYNACK = "receive_synack"
    SEND_ACK = "send_ack"  # outgoing non-SYN segment
    RECV_ACK = "receive_ack"  # incoming non-SYN segment
    DISABLE = "disable"  # local API: stop using ENO (§4.6 retransmission exception)


S, T = State, Trigger
_FAIL = frozenset({S.DISABLED, S.ABORTED})

TRANSITIONS: dict[State, dict[Trigger, frozenset[State]]] = {
    S.CLOSED: {T.SEND_SYN: frozenset({S.SYN_SENT}) | _FAIL, T.DISABLE: _FAIL},
    S.LISTEN: {T.RECV_SYN: frozenset({S.SYN_RECEIVED}) | _FAIL, T.DISABLE: _FAIL},
    S.SYN_SENT: {
        # Retransmission: option unchanged, or dropped (§4.6 exception, syn_retries_with_eno).
        T.SEND_SYN: frozenset({S.SYN_SENT, S.DISABLED}),
        T.RECV_SYN: frozenset({S.SIMUL_SYN_RECEIVED}) | _FAIL,
        T.RECV_SYNACK: frozenset({S.SYNACK_RECEIVED}) | _FAIL,
        T.DISABLE: _FAIL,  # §4.6: MAY drop ENO between SYN-only retransmissions
    },
    S.SYN_RECEIVED: {
        T.RECV_SYN: frozenset({S.SYN_RECEIVED}) | _FAIL,
        T.SEND_SYNACK: frozenset({S.SYNACK_SENT}) | _FAIL,
    },
    S.SYNACK_SENT: {
        T.RECV_SYN: frozenset({S.SYNACK_SENT}) | _FAIL,
        T.SEND_SYNACK: frozenset({S.SYNACK_SENT}),
        T.RECV_ACK: frozenset({S.ENABLED}) | _FAIL,
    },
    S.SYNACK_RECEIVED: {
        T.RECV_SYNACK: frozenset({S.SYNACK_RECEIVED}),  # retransmission: after the first ACK
        T.SEND_ACK: frozenset({S.ENABLED_ECHO}) | _FAIL,
    },
    S.SIMUL_SYN_RECEIVED: {
        T.RECV_SYN: frozenset({S.SIMUL_SYN_RECEIVED}) | _FAIL,
        T.SEND_SYNACK: frozenset({S.SIMUL_SYNACK_SENT}) | _FAIL,
    },
    S.SIMUL_SYNACK_SENT: {
        T.RECV_SYN: frozenset({S.SIMUL_SYNACK_SENT}) | _FAIL,
        T.SEND_SYNACK: frozenset({S.SIMUL_SYNACK_SENT}),
        T.RECV_SYNACK: frozenset({S.ENABLED_ECHO}) | _FAIL,
        T.RECV_ACK: frozenset({S.ENABLED}) | _FAIL,
    },
    S.ENABLED_ECHO: {
        T.SEND_ACK: frozenset({S.ENABLED_ECHO}),
        T.RECV_ACK: frozenset({S.ENABLED}),
        T.RECV_SYNACK: frozenset({S.ENABLED_ECHO}),
    },
    S.ENABLED: {
        T.SEND_ACK: frozenset({S.ENABLED}),
        T.RECV_ACK: frozenset({S.ENABLED}),
        T.RECV_SYNACK: frozenset({S.ENABLED}),
    },
    # After fallback the hook keeps reporting segments: nothing more is sent, but received
    # SYN data still gets its §4.7 verdict and our ACKed SYN data can still force an abort.
    S.DISABLED: {
        T.SEND_SYN: frozenset({S.DISABLED}),
        T.RECV_SYN: frozenset({S.DISABLED}),
        T.SEND_SYNACK: frozenset({S.DISABLED}),
        T.RECV_SYNACK: frozenset({S.DISABLED, S.ABORTED}),
        T.SEND_ACK: frozenset({S.DISABLED}),
        T.RECV_ACK: frozenset({S.DISABLED, S.ABORTED}),
        T.DISABLE: frozenset({S.DISABLED}),
    },
    S.ABORTED: {},
    S.ERROR: {},
}


def allowed_targets(state: State, trigger: Trigger) -> frozenset[State]:
    """States ``trigger`` may lead to from ``state``; empty when the trigger is illegal."""
    return TRANSITIONS[state].get(trigger, frozenset())


def check_transition(state: State, trigger: Trigger, target: State) -> None:
    """Raise EnoStateError unless the table allows ``state -trigger-> target``."""
    if target not in allowed_targets(state, trigger):
        raise EnoStateError(f"{trigger.value}: {state.name} -> {target.name} is not allowed")


__all__ = ["TRANSITIONS", "State", "Trigger", "allowed_targets", "check_transition"]
