"""The negotiation transition table (h11 style): every legal pair works, every other
pair is refused with EnoStateError and leaves the negotiator in ERROR for good."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from testbed.eno.config import EnoConfig
from testbed.eno.errors import EnoStateError
from testbed.eno.negotiation import (
    TRANSITIONS,
    EnoNegotiator,
    State,
    Trigger,
    allowed_targets,
    check_transition,
)

Z = 0x23


OPEN = EnoConfig(teps=(Z,))


def _reach(state: State) -> EnoNegotiator:
    """Drive a fresh negotiator into ``state`` through legal calls only."""
    active = state not in (State.LISTEN, State.SYN_RECEIVED, State.SYNACK_SENT)
    neg = EnoNegotiator(OPEN if state is not State.ABORTED else
                        EnoConfig(teps=(Z,), mandatory_encryption=True), active=active)
    steps: dict[State, list[Callable[[EnoNegotiator], object]]] = {
        State.CLOSED: [],
        State.LISTEN: [],
        State.SYN_SENT: [lambda n: n.send_syn()],
        State.SYN_RECEIVED: [lambda n: n.receive_syn(bytes.fromhex("450323"))],
        State.SYNACK_SENT: [lambda n: n.receive_syn(bytes.fromhex("450323")),
                            lambda n: n.send_synack()],
        State.SYNACK_RECEIVED: [lambda n: n.send_syn(),
                                lambda n: n.receive_synack(bytes.fromhex("45040123"))],
        State.SIMUL_SYN_RECEIVED: [lambda n: n.send_syn(),
                                   lambda n: n.receive_syn(bytes.fromhex("45040123"))],
        State.SIMUL_SYNACK_SENT: [lambda n: n.send_syn(),
                                  lambda n: n.receive_syn(bytes.fromhex("45040123")),
                                  lambda n: n.send_synack()],
        State.ENABLED_ECHO: [lambda n: n.send_syn(),
                             lambda n: n.receive_synack(bytes.fromhex("45040123")),
                             lambda n: n.send_ack()],
        State.ENABLED: [lambda n: n.send_syn(),
                        lambda n: n.receive_synack(bytes.fromhex("45040123")),
                        lambda n: n.send_ack(), lambda n: n.receive_ack(b"")],
        State.DISABLED: [lambda n: n.disable()],
        State.ABORTED: [lambda n: n.disable()],
        State.ERROR: [lambda n: n.send_ack()],
    }
    for step in steps[state]:
        try:
            step(neg)
        except EnoStateError:
            assert state is State.ERROR
    assert neg.state is state
    return neg


CALLS: dict[Trigger, Callable[[EnoNegotiator], object]] = {
    Trigger.SEND_SYN: lambda n: n.send_syn(),
    Trigger.RECV_SYN: lambda n: n.receive_syn(bytes.fromhex("45040123")),
    Trigger.SEND_SYNACK: lambda n: n.send_synack(),
    Trigger.RECV_SYNACK: lambda n: n.receive_synack(bytes.fromhex("45040123")),
    Trigger.SEND_ACK: lambda n: n.send_ack(),
    Trigger.RECV_ACK: lambda n: n.receive_ack(bytes.fromhex("4502")),
    Trigger.DISABLE: lambda n: n.disable(),
}

PAIRS = [(s, t) for s in State for t in Trigger]


@pytest.mark.parametrize(("state", "trigger"), PAIRS, ids=[f"{s.name}-{t.name}" for s, t in PAIRS])
def test_every_state_trigger_pair(state: State, trigger: Trigger) -> None:
    neg = _reach(state)
    if allowed_targets(state, trigger):
        CALLS[trigger](neg)
        assert neg.state in allowed_targets(state, trigger)
    else:
        with pytest.raises(EnoStateError):
            CALLS[trigger](neg)
        assert neg.state is State.ERROR
        for call in CALLS.values():  # after an error every further call raises
            with pytest.raises(EnoStateError):
                call(neg)


def test_check_transition_refuses_everything_off_table() -> None:
    refused = 0
    for state in State:
        for trigger in Trigger:
            for target in State:
                if target in TRANSITIONS[state].get(trigger, frozenset()):
                    check_transition(state, trigger, target)
                else:
                    with pytest.raises(EnoStateError):
                        check_transition(state, trigger, target)
                    refused += 1
    assert refused > len(State) * len(Trigger) * (len(State) - 4)


def test_terminal_states_have_no_exit() -> None:
    for state in (State.ABORTED, State.ERROR):
        assert TRANSITIONS[state] == {}
    assert all(targets == {State.DISABLED} or targets == {State.DISABLED, State.ABORTED}
               for targets in TRANSITIONS[State.DISABLED].values())


def test_state_changes_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="testbed.eno.negotiation")
    EnoNegotiator(OPEN, active=True).send_syn()
    assert "CLOSED -> SYN_SENT on send_syn" in caplog.text
