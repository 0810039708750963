"""Where a run's wall time went (experiments/runtime.py), on run directories made here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from experiments import runtime


def _run(root: Path, name: str, meta: dict[str, Any], points: list[dict[str, Any]],
         records: list[dict[str, Any]]) -> Path:
    run = root / name / "20261202T000000Z-quick"
    run.mkdir(parents=True)
    (run / "metadata.json").write_text(json.dumps({"experiment": name, **meta}))
    (run / "points.jsonl").write_text("".join(json.dumps(p, sort_keys=True) + "\n"
                                              for p in points))
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def test_an_experiment_splits_into_points_connections_timeouts_and_setup(
        tmp_path: Path) -> None:
    points = [{"proto": "tls", "box": "a"}, {"proto": "tls", "box": "b"}]
    records = [
        {"proto": "tls", "box": "a", "conn": 0, "total_ms": 1500.0, "point_s": 4.0},
        {"proto": "tls", "box": "a", "conn": 1, "total_ms": 500.0, "point_s": 4.0},
        {"proto": "tls", "box": "b", "conn": 0, "total_ms": None, "timeout_s": 5.0,
         "error": "TimeoutError: connect to 10.0.2.2:443 timed out", "point_s": 9.0},
        # A connection that failed at once (a reset) adds no time inside connections.
        {"proto": "tls", "box": "b", "conn": 1, "total_ms": None, "timeout_s": 5.0,
         "error": "ConnectionResetError", "point_s": 9.0},
    ]
    meta = {"duration_s": 12.5, "analysis_s": 1.5, "points_total": 2, "cpu_s": 8.25,
            "concurrency": [{"executor": "local-concurrent", "workers": 2}]}
    row = runtime.experiment_time(_run(tmp_path, "fallback", meta, points, records))
    assert row == {"experiment": "fallback", "run": "20261202T000000Z-quick", "points": 2,
                   "workers": 2, "wall_s": 12.5, "analysis_s": 1.5, "points_wall_s": 11.0,
                   "point_s": 13.0, "connections_s": 7.0, "timeouts_s": 5.0,
                   "setup_s": 6.0, "cpu_s": 8.25}


def test_benchmark_points_have_no_connection_split_and_old_runs_no_point_times(
        tmp_path: Path) -> None:
    bench = _run(tmp_path, "cost", {"duration_s": 30.0, "analysis_s": 1.0},
                 [{"bench": "x"}], [{"bench": "x", "value": 1, "point_s": 29.0}])
    row = runtime.experiment_time(bench)
    assert (row["point_s"], row["connections_s"], row["timeouts_s"], row["setup_s"]) == (
        29.0, None, None, None)
    assert row["workers"] == 1
    old = _run(tmp_path, "latency", {}, [{"rtt_ms": 10}], [{"rtt_ms": 10, "total_ms": 20.0}])
    row = runtime.experiment_time(old)
    assert (row["wall_s"], row["points_wall_s"], row["point_s"], row["setup_s"],
            row["cpu_s"]) == (None, None, None, None, None)
    assert row["connections_s"] == 0.0


def test_the_report_table_adds_the_wall_times(tmp_path: Path) -> None:
    runs = {name: _run(tmp_path, name, {"duration_s": wall, "analysis_s": 0.5, "cpu_s": cpu},
                       [{"i": 0}], [{"i": 0, "total_ms": 1000.0, "point_s": wall - 0.5}])
            for name, wall, cpu in (("latency", 100.0, 40.0), ("loss", 50.25, 30.5))}
    lines = runtime.section(runs)
    assert lines[0] == "## Run time"
    table = [line for line in lines if line.startswith("| ")]
    assert table[0] == "| " + " | ".join(runtime.COLUMNS) + " |"
    assert table[1] == (
        "| latency | 1 | 1 | 100.0 | 99.5 | 0.5 | 99.5 | 1.0 | 0.0 | 98.5 | 40.0 |")
    assert table[-1].startswith("| total | | | 150.2 |") and table[-1].endswith(" 70.5 |")
    assert len(table[-1].split("|")) == len(table[0].split("|"))
    assert runtime.section({}) == []


def test_an_experiment_records_the_cpu_of_its_processes(tmp_path: Path) -> None:
    import subprocess
    import sys

    from experiments.runner import cpu_seconds

    before = cpu_seconds()
    # A child that spins for 0.3 s of CPU; waited for, so it counts.
    subprocess.run([sys.executable, "-c", "import time\nend = time.process_time() + 0.3\n"
                    "while time.process_time() < end: pass"], check=True)
    assert cpu_seconds() - before >= 0.3


def test_a_run_records_its_cpu_and_its_run_time_row(tmp_path: Path) -> None:
    from experiments.runner import RunContext, run_experiment

    ctx = RunContext(tmp_path / "idle" / "r", "quick", None, 1, "userspace")
    run_experiment("idle", ctx, {"profile": "quick", "seed": 1}, only=lambda p: p["i"] == 0)
    meta = json.loads((ctx.run_dir / "metadata.json").read_text())
    assert 0 <= meta["cpu_s"] < meta["duration_s"]  # a sleeping point: mostly waiting
    row = runtime.experiment_time(ctx.run_dir)
    assert row["points"] == 1 and row["cpu_s"] == meta["cpu_s"] and row["point_s"] >= 1.0
