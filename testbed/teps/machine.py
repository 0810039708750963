"""The state-table lookup and the error boundary the sans-IO TEP cores share.

A core's table maps (state, trigger) to the next state; anything not in it is illegal
(``next_state``). Every public call of a core runs inside its ``Boundary``: a core that already
failed refuses the call, and any error the call raises takes the core to its ERROR state
(which has no way out) before it propagates, so nothing a failed core holds can be delivered
later (RFC 8547 §4.6: no unauthenticated byte reaches the application). The eno-test core
(testbed/teps/enotest.py), tcpcrypt (testbed/teps/tcpcrypt/core.py) and TLS
(testbed/teps/tls/core.py) use both; the ENO negotiator's table (testbed/eno/transitions.py)
lists several possible targets per trigger and keeps its own lookup, but its calls go through
the same boundary.

A core keeps its boundary, and the boundary calls the core's methods: it holds them weakly
(the function and a weak reference to the instance), or every core would sit in a reference
cycle that only a full collection frees (the hook makes one negotiator per connection and
collects rarely, testbed/eno/hook.py).
"""

from __future__ import annotations

import enum
import weakref
from collections.abc import Callable, Mapping
from types import MethodType, TracebackType
from typing import Any, TypeVar

_S = TypeVar("_S", bound=enum.Enum)
_T = TypeVar("_T", bound=enum.Enum)


def next_state(table: Mapping[tuple[_S, _T], _S], state: _S, trigger: _T,
               illegal: Callable[[str], Exception]) -> _S:
    """The state ``trigger`` leads to from ``state``; ``illegal(message)`` if none."""
    new = table.get((state, trigger))
    if new is None:
        raise illegal(f"{trigger.value} is not allowed in state {state.value}")
    return new


_Weak = tuple["weakref.ref[Any] | None", Callable[..., Any]]


def _weak(fn: Callable[..., Any]) -> _Weak:
    """A bound method as a weak reference to its instance and its function (the instance
    passed back on each call); any other callable as (None, itself)."""
    if isinstance(fn, MethodType):
        return weakref.ref(fn.__self__), fn.__func__
    return None, fn


def _call(weak: _Weak, *args: Any) -> Any:
    ref, fn = weak
    if ref is None:
        return fn(*args)
    owner = ref()
    if owner is None:
        raise ReferenceError("the core this boundary belonged to is gone")
    return fn(owner, *args)


class Boundary:
    """A core's error boundary around each public call (``with core_boundary: ...``).

    Made once per core: ``failed()`` returns the error to refuse a call with (the core already
    failed) or None. An exception of ``catch`` leaving the block first goes through
    ``translate`` (a library's error made a TEP error; None keeps it), then ``enter_error``
    runs, then the error propagates. A plain class, not a generator: it sits on every call of
    the data path. Bound methods are held weakly (see the module's docstring)."""

    __slots__ = ("_catch", "_enter_error", "_failed", "_translate")

    def __init__(
        self, *, failed: Callable[[], Exception | None], enter_error: Callable[[], None],
        catch: tuple[type[Exception], ...] = (Exception,),
        translate: Callable[[Exception], Exception | None] | None = None,
    ) -> None:
        self._failed, self._enter_error = _weak(failed), _weak(enter_error)
        self._catch = catch
        self._translate = _weak(translate) if translate is not None else None

    def __enter__(self) -> None:
        refusal: Exception | None = _call(self._failed)
        if refusal is not None:
            raise refusal

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 _tb: TracebackType | None) -> None:
        if exc is None or not isinstance(exc, self._catch):
            return
        replacement: Exception | None = (
            _call(self._translate, exc) if self._translate is not None else None)
        _call(self._enter_error)
        if replacement is not None:
            raise replacement from exc
