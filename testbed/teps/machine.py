"""The state-table lookup and the error boundary the sans-IO TEP cores share.

A core's table maps (state, trigger) to the next state; anything not in it is illegal
(``next_state``). Every public call of a core runs inside its ``Boundary``: a core that already
failed refuses the call, and any error the call raises takes the core to its ERROR state
(which has no way out) before it propagates, so nothing a failed core holds can be delivered
later (RFC 8547 §4.6: no unauthenticated byte reaches the application). The eno-test core
(testbed/teps/enotest.py), tcpcrypt (testbed/teps/tcpcrypt/core.py) and TLS
(testbed/teps/tls/core.py) use both; the ENO negotiator's table (testbed/eno/transitions.py)
lists several possible targets per trigger and keeps its own lookup and boundary.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from types import TracebackType
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


class Boundary:
    """A core's error boundary around each public call (``with core_boundary: ...``).

    Made once per core: ``failed()`` returns the error to refuse a call with (the core already
    failed) or None. An exception of ``catch`` leaving the block first goes through
    ``translate`` (a library's error made a TEP error; None keeps it), then ``enter_error``
    runs, then the error propagates. A plain class, not a generator: it sits on every call of
    the data path."""

    __slots__ = ("_catch", "_enter_error", "_failed", "_translate")

    def __init__(
        self, *, failed: Callable[[], Exception | None], enter_error: Callable[[], None],
        catch: tuple[type[Exception], ...] = (Exception,),
        translate: Callable[[Exception], Exception | None] | None = None,
    ) -> None:
        self._failed, self._enter_error = failed, enter_error
        self._catch, self._translate = catch, translate

    def __enter__(self) -> None:
        refusal = self._failed()
        if refusal is not None:
            raise refusal

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 _tb: TracebackType | None) -> None:
        if exc is None or not isinstance(exc, self._catch):
            return
        replacement = self._translate(exc) if self._translate is not None else None
        self._enter_error()
        if replacement is not None:
            raise replacement from exc
