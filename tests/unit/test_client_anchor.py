"""The client's clock anchor: a record's monotonic timestamps placed on the captures' wall clock
(testbed/apps/client.py, clock_anchor)."""
from __future__ import annotations

import pytest

from testbed.apps import client


def _clocks(monkeypatch, perf: list[float], wall: list[float]) -> None:
    perf_iter, wall_iter = iter(perf), iter(wall)
    monkeypatch.setattr(client.time, "perf_counter", lambda: next(perf_iter))
    monkeypatch.setattr(client.time, "time", lambda: next(wall_iter))


def test_a_preempted_read_is_retried_and_the_tight_pair_kept(monkeypatch):
    # First try: 3 ms between the two perf_counter reads (the thread lost the CPU there).
    # Second try: 10 us, tight enough to stop.
    _clocks(monkeypatch, perf=[1.000, 1.003, 2.000, 2.00001], wall=[500.0, 600.0])
    mono, wall = client.clock_anchor()
    assert mono == 2.00001
    assert wall == pytest.approx(600.0 + 5e-6)


def test_without_a_tight_pair_the_tightest_of_the_tries_is_kept(monkeypatch):
    perf = []
    for i, gap in enumerate([0.004, 0.001, 0.003, 0.002, 0.005]):
        perf += [10.0 * i, 10.0 * i + gap]
    _clocks(monkeypatch, perf=perf, wall=[100.0, 200.0, 300.0, 400.0, 500.0])
    mono, wall = client.clock_anchor()
    assert mono == 10.001
    assert wall == pytest.approx(200.0 + 0.0005)
