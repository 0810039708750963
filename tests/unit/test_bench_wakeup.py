"""`tcpinc bench wakeup`: structure of its figures (no timing is asserted)."""

from __future__ import annotations

import pytest

from testbed import bench_wakeup
from testbed.cli import build_parser


def test_measure_reports_every_gap_against_the_smallest():
    result = bench_wakeup.measure(gaps_ms=(2.0, 0.0), rounds=3, warmup=1)
    rows = result["rows"]
    assert [r["gap_ms"] for r in rows] == [0.0, 2.0]
    assert all(r["n"] == 3 and 0 < r["p10_us"] <= r["median_us"] <= r["p90_us"] for r in rows)
    assert rows[0]["ratio_to_smallest_gap"] == 1.0


@pytest.mark.parametrize("kwargs", [{"rounds": 0}, {"gaps_ms": ()}, {"gaps_ms": (-1.0,)}])
def test_measure_refuses_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        bench_wakeup.measure(**kwargs)


def test_cli_knows_the_target():
    args = build_parser().parse_args(["bench", "wakeup", "--quick"])
    assert args.target == "wakeup" and args.quick
