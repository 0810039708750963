"""The theory table's keys: registered arms only; the unbuilt SYN-data arms kept apart."""

from __future__ import annotations

from experiments.theory import SYN_DATA_THEORY_RTTS, THEORY_RTTS
from testbed.apps.transport import TRANSPORTS


def test_every_theory_row_is_a_registered_arm_and_syn_data_rows_are_not() -> None:
    assert set(THEORY_RTTS) <= set(TRANSPORTS), set(THEORY_RTTS) - set(TRANSPORTS)
    assert not set(SYN_DATA_THEORY_RTTS) & set(THEORY_RTTS)
    for send, resp in SYN_DATA_THEORY_RTTS.values():
        assert resp == send + 1  # client speaks first, zero think time: one RTT for the answer
