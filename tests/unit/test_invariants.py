"""Invariants raise a typed error (an ``assert`` would vanish under ``python -O``)."""

from __future__ import annotations

import pytest

from testbed.eno.config import EnoConfig
from testbed.eno.errors import EnoStateError
from testbed.eno.negotiation import EnoNegotiator, State
from testbed.errors import InvariantError, TestbedError, present


def test_present_returns_a_value_and_names_what_is_missing():
    assert present(0, "zero") == 0  # falsy but present
    with pytest.raises(InvariantError, match="the network's plan is missing") as caught:
        present(None, "the network's plan")
    assert isinstance(caught.value, TestbedError)


def test_a_negotiator_missing_what_its_state_implies_raises_and_ends_in_error():
    """SIMUL_SYN_RECEIVED implies our SYN-form option is known; without it send_synack raises
    EnoStateError (not an AssertionError) and the negotiator is left in ERROR."""
    neg = EnoNegotiator(EnoConfig(), active=True)
    neg._state = State.SIMUL_SYN_RECEIVED  # a state reached without its option (a bug)
    with pytest.raises(EnoStateError, match="our SYN-form option is not known"):
        neg.send_synack()
    assert neg.state is State.ERROR
