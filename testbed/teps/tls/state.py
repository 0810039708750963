"""States of a TLS TEP core and the two tables that govern them.

Theory of operation
-------------------
A core goes IDLE -> HANDSHAKING on ``start``. It is OPEN once OpenSSL reports the handshake
done (RFC 8446 §2: for the client after the server's Finished, for the server after the
client's Finished). Closing is per direction, as TLS 1.3 allows (RFC 8446 §6.1): our
close_notify takes OPEN to LOCAL_CLOSED, the peer's to REMOTE_CLOSED, both to CLOSED. Any
error, ours or the peer's, goes to ERROR, which has no way out (testbed.teps.base). 0-RTT
(RFC 8446 §2.3) happens inside HANDSHAKING and is tracked by the core, not here.

``TRANSITIONS`` lists every legal state change; ``CALLS`` lists, per public method, the states
in which calling it is legal. Anything else is refused, and tests walk both tables.
"""

from __future__ import annotations

import enum
from typing import Final

from testbed.teps.base import LocalProtocolError, TepStateError


class TlsState(enum.Enum):
    IDLE = "idle"
    HANDSHAKING = "handshaking"
    OPEN = "open"
    LOCAL_CLOSED = "local-closed"  # our close_notify queued, peer may still send
    REMOTE_CLOSED = "remote-closed"  # peer's close_notify seen, we may still send
    CLOSED = "closed"
    ERROR = "error"


S = TlsState
TRANSITIONS: Final[dict[TlsState, frozenset[TlsState]]] = {
    S.IDLE: frozenset({S.HANDSHAKING, S.ERROR}),
    S.HANDSHAKING: frozenset({S.OPEN, S.ERROR}),
    S.OPEN: frozenset({S.LOCAL_CLOSED, S.REMOTE_CLOSED, S.ERROR}),
    S.LOCAL_CLOSED: frozenset({S.CLOSED, S.ERROR}),
    S.REMOTE_CLOSED: frozenset({S.CLOSED, S.ERROR}),
    S.CLOSED: frozenset({S.ERROR}),
    S.ERROR: frozenset(),
}

_LIVE = frozenset(s for s in TlsState if s is not S.ERROR)
CALLS: Final[dict[str, frozenset[TlsState]]] = {
    "start": frozenset({S.IDLE}),
    # Bytes after the peer's close_notify are ignored (RFC 8446 §6.1), not refused.
    "receive_data": frozenset({S.HANDSHAKING, S.OPEN, S.LOCAL_CLOSED, S.REMOTE_CLOSED, S.CLOSED}),
    # Before OPEN, data is queued (or sent as 0-RTT / 0.5-RTT data when configured).
    "send_data": frozenset({S.HANDSHAKING, S.OPEN, S.REMOTE_CLOSED}),
    # A second close is a no-op; a close during the handshake takes effect when it completes.
    "close": frozenset({S.HANDSHAKING, S.OPEN, S.REMOTE_CLOSED, S.LOCAL_CLOSED, S.CLOSED}),
    # A FIN is legal in every live state; whether it is a truncation depends on the state.
    "peer_closed": _LIVE,
    "data_to_send": _LIVE,
}


def check_transition(old: TlsState, new: TlsState) -> None:
    if new not in TRANSITIONS[old]:
        raise LocalProtocolError(f"illegal TLS core transition {old.value} -> {new.value}")


def check_call(method: str, state: TlsState) -> None:
    """Raise TepStateError after an error, LocalProtocolError for a call out of place."""
    if state is S.ERROR:
        raise TepStateError(f"{method}() on a TLS core that already failed")
    if state not in CALLS[method]:
        raise LocalProtocolError(f"{method}() not allowed in state {state.value}")
