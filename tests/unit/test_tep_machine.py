"""The TEP cores' shared state-table lookup and error boundary (testbed/teps/machine.py)."""

from __future__ import annotations

import enum

import pytest

from testbed.teps import machine


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
