"""The matrix comparison of tests/emulation/test_middlebox_matrix.py, on made-up tables."""

from __future__ import annotations

import pandas as pd

from tests.emulation.test_middlebox_matrix import moved_cells


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
