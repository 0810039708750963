"""Helpers the TcpcryptCore tests share: a core from options, an established pair, the
data of events, the check that a core is dead after an error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from testbed.teps.base import DataReceived, Role, TepContext, TepEvent, TepStateError
from testbed.teps.tcpcrypt.constants import TepId
from testbed.teps.tcpcrypt.core import TcpcryptCore
from testbed.teps.tcpcrypt.loopback import DeterministicRandom
from testbed.teps.tcpcrypt.state import State


def core(role: Role, tep: int = TepId.X25519, *, rand: Callable[[int], bytes] | None = None,
         **options: Any) -> TcpcryptCore:
    opts = {f"tcpcrypt.{k}": v for k, v in options.items()}
    ctx = TepContext(role, b"T", rand or DeterministicRandom(role.value), options=opts)
    return TcpcryptCore(ctx, tep)


def established(tep: int = TepId.X25519, **options: Any) -> tuple[TcpcryptCore, TcpcryptCore]:
    a, b = core(Role.A, tep, **options), core(Role.B, tep, **options)
    a.start(0.0)
    b.start(0.0)
    b.receive_data(a.data_to_send(), 0.0)
    a.receive_data(b.data_to_send(), 0.0)
    return a, b


def data_of(events: list[TepEvent]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataReceived))


def assert_dead(c: TcpcryptCore) -> None:
    """After an error: ERROR state, and every call raises TepStateError."""
    assert c.state is State.ERROR
    calls: list[Callable[[], object]] = [
        lambda: c.start(0.0),
        lambda: c.receive_data(b"", 0.0),
        lambda: c.send_data(b"x"),
        c.close,
        c.peer_closed,
        c.data_to_send,
        c.rekey,
        c.flush_cache,
    ]
    for call in calls:
        with pytest.raises(TepStateError):
            call()
