"""The tcpcrypt connection state machine, as a transition table (h11 ``_state.py`` style).

Theory of operation
-------------------
A core starts IDLE. ``start()`` moves it on according to what ENO negotiated:

* fresh key exchange, role A: it sends Init1 and waits for Init2 (WAIT_INIT2);
* fresh key exchange, role B: it waits for Init1 (WAIT_INIT1), and answers it with Init2;
* resumption (RFC 8548 §3.5): no Init messages, keys are there at once (ESTABLISHED).

Once keys exist (ESTABLISHED) each direction closes on its own: LOCAL_FIN when this end sends
its FINp frame, PEER_FIN when the peer's FINp frame arrives (§3.7); both make CLOSED. Any error
makes ERROR, which has no way out. Rekeying (§3.8) changes generations, not states.

Anything not in ``TRANSITIONS`` is illegal, and ``next_state`` refuses it; the tests walk the
whole table to prove that.
"""

from __future__ import annotations

import enum

from testbed.teps import machine

from .errors import IllegalTransition


class State(enum.Enum):
    IDLE = "idle"
    WAIT_INIT1 = "wait-init1"  # role B, fresh (§3.3)
    WAIT_INIT2 = "wait-init2"  # role A, fresh, Init1 sent (§3.3)
    ESTABLISHED = "established"  # frames both ways (§3.6)
    LOCAL_CLOSED = "local-closed"  # our FINp frame sent (§3.7)
    PEER_CLOSED = "peer-closed"  # the peer's FINp frame received (§3.7)
    CLOSED = "closed"
    ERROR = "error"


class Trigger(enum.Enum):
    START_A = "start-a"
    START_B = "start-b"
    START_RESUMED = "start-resumed"
    INIT1_RECEIVED = "init1-received"
    INIT2_RECEIVED = "init2-received"
    LOCAL_FIN = "local-fin"
    PEER_FIN = "peer-fin"
    FAIL = "fail"


TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (State.IDLE, Trigger.START_A): State.WAIT_INIT2,
    (State.IDLE, Trigger.START_B): State.WAIT_INIT1,
    (State.IDLE, Trigger.START_RESUMED): State.ESTABLISHED,
    (State.WAIT_INIT1, Trigger.INIT1_RECEIVED): State.ESTABLISHED,
    (State.WAIT_INIT2, Trigger.INIT2_RECEIVED): State.ESTABLISHED,
    (State.ESTABLISHED, Trigger.LOCAL_FIN): State.LOCAL_CLOSED,
    (State.ESTABLISHED, Trigger.PEER_FIN): State.PEER_CLOSED,
    (State.LOCAL_CLOSED, Trigger.PEER_FIN): State.CLOSED,
    (State.PEER_CLOSED, Trigger.LOCAL_FIN): State.CLOSED,
    **{(state, Trigger.FAIL): State.ERROR for state in State if state is not State.ERROR},
}

# States in which this end may still send frames, and in which frames may still arrive.
CAN_SEND = frozenset({State.ESTABLISHED, State.PEER_CLOSED})
CAN_RECEIVE_FRAMES = frozenset({State.ESTABLISHED, State.LOCAL_CLOSED})
KEYED = frozenset({State.ESTABLISHED, State.LOCAL_CLOSED, State.PEER_CLOSED, State.CLOSED})


def next_state(state: State, trigger: Trigger) -> State:
    """The state ``trigger`` leads to from ``state``; IllegalTransition if there is none."""
    return machine.next_state(TRANSITIONS, state, trigger, IllegalTransition)
