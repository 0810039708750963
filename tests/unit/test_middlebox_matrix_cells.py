"""The matrix comparison of tests/emulation/test_middlebox_matrix.py, on made-up tables."""

from __future__ import annotations

import pandas as pd

from experiments import fallback
from tests.emulation.test_middlebox_matrix import (
    EXPECTED,
    KEY,
    datapath_free,
    moved_cells,
    quick_boxes,
)


def test_moved_cells_reports_changes() -> None:
    expected = pd.DataFrame([{"proto": "tls", "policy": "required", "middlebox": "dpi-443",
                              "outcome": "encrypted"}])
    measured = expected.assign(outcome="failed:reset")
    assert moved_cells(expected, expected) == []
    (line,) = moved_cells(expected, measured)
    assert "dpi-443" in line and "expected encrypted" in line and "got failed:reset" in line
    tampered = expected.assign(middlebox="tamper:rate=0.5", outcome="failed:timeout")
    assert moved_cells(tampered, tampered.assign(outcome="failed:integrity")) == []
    assert moved_cells(tampered, tampered.assign(outcome="encrypted")) != []


def test_committed_table_has_exactly_the_quick_cells() -> None:
    """The emulation test compares one middlebox model at a time; this is the check that
    no cell appeared in the quick profile or vanished from it."""
    expected = pd.read_csv(EXPECTED)
    cells = [tuple(row) for row in expected[KEY].itertuples(index=False)]
    quick = [(p["proto"], p["policy"] or "-", p["middlebox"]) for p in fallback.points("quick")]
    assert len(cells) == len(set(cells))
    assert set(cells) == set(quick)
    assert set(expected["middlebox"]) == set(quick_boxes())


def test_the_bpf_run_leaves_out_only_cells_the_datapath_does_not_carry() -> None:
    """The bpf run of the matrix skips the SYN-data arms (on nfqueue whatever the run's
    datapath) and plain (its network's first point, before any ENO arm); it keeps every other
    arm of every model, ENO with both policies and the non-ENO arms after them."""
    points = fallback.points("quick")
    skipped = {p["proto"] for p in points if datapath_free(p)}
    assert skipped == {"plain", *fallback.QUICK_SYN_ARMS}
    kept = {(p["proto"], p["policy"]) for p in points if not datapath_free(p)}
    assert kept == {(proto, policy) for proto in ("tcpcrypt", "tls")
                    for policy in fallback.POLICIES} | {("tls-noeno", None)}
    for box in quick_boxes():  # plain is the first point on each model's network
        assert next(p for p in points if p["middlebox"] == box)["proto"] == "plain"
