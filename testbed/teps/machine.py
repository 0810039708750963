"""The state-table lookup and the error boundary the sans-IO TEP cores share.

A core's table maps (state, trigger) to the next state; anything not in it is illegal
(``next_state``). Every public call of a core runs inside ``boundary``: a core that already
failed refuses the call, and any error the call raises takes the core to its ERROR state
(which has no way out) before it propagates, so nothing a failed core holds can be delivered
later (RFC 8547 §4.6: no unauthenticated byte reaches the application). The eno-test core
(testbed/teps/enotest.py), tcpcrypt (testbed/teps/tcpcrypt/core.py) and TLS
(testbed/teps/tls/core.py) use both; the ENO negotiator's table (testbed/eno/transitions.py)
lists several possible targets per trigger and keeps its own lookup.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TypeVar

_S = TypeVar("_S", bound=enum.Enum)
_T = TypeVar("_T", bound=enum.Enum)


def next_state(table: Mapping[tuple[_S, _T], _S], state: _S, trigger: _T,
               illegal: Callable[[str], Exception]) -> _S:
    """The state ``trigger`` leads to from ``state``; ``illegal(message)`` if none."""
    new = table.get((state, trigger))
    if new is None:
        raise illegal(f"{trigger.value} is not allowed in state {state.value}")
    return new


@contextmanager
def boundary(
    *, failed: Callable[[], Exception | None], enter_error: Callable[[], None],
    catch: tuple[type[Exception], ...] = (Exception,),
    translate: Callable[[Exception], Exception | None] | None = None,
) -> Iterator[None]:
    """A core's error boundary around one public call.

    ``failed()`` returns the error to refuse the call with (the core already failed) or None.
    An exception of ``catch`` first goes through ``translate`` (a library's error made a TEP
    error; None keeps it), then ``enter_error`` runs, then the error propagates."""
    refusal = failed()
    if refusal is not None:
        raise refusal
    try:
        yield
    except catch as exc:
        replacement = translate(exc) if translate is not None else None
        enter_error()
        if replacement is not None:
            raise replacement from exc
        raise
