"""The matrix comparison of tests/emulation/test_middlebox_matrix.py, on made-up tables."""

from __future__ import annotations

import pandas as pd

from experiments import fallback
from tests.emulation.test_middlebox_matrix import EXPECTED, KEY, moved_cells, quick_boxes


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
