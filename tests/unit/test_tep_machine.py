"""The TEP cores' shared state-table lookup and error boundary (testbed/teps/machine.py)."""

from __future__ import annotations

import enum
import gc
import weakref
from collections.abc import Callable

import pytest

from testbed.eno.config import EnoConfig
from testbed.eno.errors import EnoStateError
from testbed.eno.negotiation import EnoNegotiator
from testbed.teps import machine
from testbed.teps.base import Role, TepContext
from testbed.teps.enotest import EnoTestCore
from testbed.teps.tcpcrypt.constants import TepId
from testbed.teps.tcpcrypt.core import TcpcryptCore
from testbed.teps.tls.core import TlsCore


class S(enum.Enum):
    IDLE = "idle"
    OPEN = "open"
    ERROR = "error"


class T(enum.Enum):
    START = "start"
    FAIL = "fail"


TABLE = {(S.IDLE, T.START): S.OPEN, (S.IDLE, T.FAIL): S.ERROR, (S.OPEN, T.FAIL): S.ERROR}


class Illegal(Exception):
    pass


def test_next_state_follows_the_table_and_refuses_the_rest():
    assert machine.next_state(TABLE, S.IDLE, T.START, Illegal) is S.OPEN
    with pytest.raises(Illegal, match="^start is not allowed in state open$"):
        machine.next_state(TABLE, S.OPEN, T.START, Illegal)
    with pytest.raises(Illegal, match="^fail is not allowed in state error$"):
        machine.next_state(TABLE, S.ERROR, T.FAIL, Illegal)


def test_boundary_refuses_a_failed_core_and_takes_errors_to_error_once():
    entered: list[str] = []
    state = {"failed": False}

    def refusal() -> Exception | None:
        return Illegal("already failed") if state["failed"] else None

    def enter_error() -> None:
        entered.append("error")
        state["failed"] = True

    boundary = machine.Boundary(failed=refusal, enter_error=enter_error)
    with boundary:
        pass  # a call that succeeds changes nothing
    assert entered == []
    with pytest.raises(ValueError, match="bad"), boundary:
        raise ValueError("bad")
    assert entered == ["error"]
    with pytest.raises(Illegal, match="already failed"), boundary:
        raise AssertionError("the body of a refused call never runs")
    assert entered == ["error"]


def test_boundary_translates_before_entering_error_and_lets_uncaught_errors_pass():
    order: list[str] = []

    def translate(exc: Exception) -> Exception | None:
        order.append("translate")
        return Illegal(f"meant: {exc}") if isinstance(exc, KeyError) else None

    with pytest.raises(Illegal, match="meant: 'k'") as caught, machine.Boundary(
            failed=lambda: None, enter_error=lambda: order.append("error"),
            catch=(KeyError,), translate=translate):
        raise KeyError("k")
    assert order == ["translate", "error"] and isinstance(caught.value.__cause__, KeyError)
    with pytest.raises(ZeroDivisionError), machine.Boundary(
            failed=lambda: None, enter_error=lambda: order.append("error"), catch=(KeyError,)):
        raise ZeroDivisionError
    assert order == ["translate", "error"]  # not caught: the core is left as it was


class Core:
    """A core the way the real ones keep their boundary: built from its own bound methods."""

    def __init__(self) -> None:
        self.failed = False
        self.boundary = machine.Boundary(failed=self.refusal, enter_error=self.enter_error,
                                         translate=self.translated)

    def refusal(self) -> Exception | None:
        return Illegal("already failed") if self.failed else None

    def enter_error(self) -> None:
        self.failed = True

    def translated(self, exc: Exception) -> Exception | None:
        return Illegal(f"core: {exc}")

    def call(self, fail: bool) -> None:
        with self.boundary:
            if fail:
                raise KeyError("k")


def freed_when_dropped(make: Callable[[], object]) -> bool:
    """Whether what ``make`` returns goes as soon as its last reference does, with the cyclic
    collector off (only reference counting frees anything). Whatever making it left in
    garbage cycles (a caught exception's traceback holds its frames) is collected first."""
    owner = make()
    gc.collect()
    gc.disable()
    try:
        ref = weakref.ref(owner)
        del owner
        return ref() is None
    finally:
        gc.enable()


def test_boundary_holds_its_cores_methods_weakly() -> None:
    core = [Core()]  # the only reference, handed over below
    core[0].call(fail=False)
    with pytest.raises(Illegal, match="core: 'k'"):
        core[0].call(fail=True)
    assert core[0].failed
    with pytest.raises(Illegal, match="already failed"):
        core[0].call(fail=False)
    boundary = core[0].boundary
    assert freed_when_dropped(core.pop), "the boundary kept its core alive (a reference cycle)"
    with pytest.raises(ReferenceError, match="core this boundary belonged to is gone"), \
            boundary:
        pass


def _failed_negotiator() -> EnoNegotiator:
    neg = EnoNegotiator(EnoConfig(teps=(0x21,)), active=True)
    neg.send_syn(b"")
    with pytest.raises(EnoStateError):
        neg.send_synack(b"")  # refused by the boundary: the negotiator is left in ERROR
    return neg


@pytest.mark.parametrize("make", [
    lambda: EnoNegotiator(EnoConfig(teps=(0x21,)), active=True),
    _failed_negotiator,
    lambda: EnoTestCore(TepContext(Role.A, b"t")),
    lambda: TcpcryptCore(TepContext(Role.A, b"t"), TepId.X25519),
    lambda: TlsCore(TepContext(Role.A, b"t", options={"mode": "eno"})),
], ids=["eno-negotiator", "eno-negotiator-failed", "eno-test", "tcpcrypt", "tls"])
def test_every_core_is_freed_without_a_collection(make: Callable[[], object]) -> None:
    """The hook makes a negotiator (and an endpoint a core) per connection and collects
    rarely (testbed/eno/hook.py): none may need the cyclic collector to be freed."""
    assert freed_when_dropped(make)
