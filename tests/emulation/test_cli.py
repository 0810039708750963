"""The CLI end to end, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from experiments.common import count_from_pcaps
from testbed.apps.priority import ENDPOINT_RT_PRIORITY
from testbed.probe import PROBE_KEYS
from tests.helpers import counted_rounds, theory_rounds


def tcpinc(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "testbed", *args], capture_output=True,
                          text=True, check=False, timeout=timeout)


def test_probe_prints_stable_json_lines(tmp_path):
    proc = tcpinc("probe", "--topology", "direct", "--rtt", "20ms", "--proto", "plain",
                  "--repeat", "3", "--pcap-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(records) == 3
    for record in records:
        assert list(record)[: len(PROBE_KEYS)] == list(PROBE_KEYS)
        assert record["outcome"] == "plaintext" and record["bytes_ok"] is True
        assert record["link_backend"] in ("netem", "userspace")
        assert record["delay_helper"] == ("c" if record["link_backend"] == "userspace"
                                          else "none")
        # Physics, one-sided: nothing arrives sooner than the path allows.
        assert record["connect_ms"] >= 20.0 and record["ttfb_ms"] >= 40.0, record
    # Exact: connect after one round trip, the response in the second, from the capture.
    assert counted_rounds(tmp_path / "probe-plain.pcap", records) == 3 * [theory_rounds("plain")]


def test_probe_through_a_middlebox_reports_counters():
    proc = tcpinc("probe", "--middlebox", "passthrough", "--repeat", "2")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert records[0]["topology"] == "middlebox"
    assert records[-1]["middlebox_counters"]["seen"] >= 2 * 5


def test_run_latency_writes_a_complete_run_directory(tmp_path: Path):
    proc = tcpinc("run", "latency", "--quick", "--repeat", "2", "--out", str(tmp_path),
                  "--protocols", "plain,plain-tfo", timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    # One line per experiment, then the command's wall time and its split (README, CLI table).
    assert [line.get("experiment") for line in lines[:-1]] == ["latency"]
    assert [row["experiment"] for row in lines[-1]["run_time"]] == ["latency"]
    assert lines[-1]["wall_s"] > 0 and lines[-1]["experiments_s"] > 0
    run_dir = Path(lines[0]["run_dir"])
    meta = json.loads((run_dir / "metadata.json").read_text())
    for key in ("git_commit", "kernel", "link_backend", "packages", "seed", "arguments"):
        assert key in meta
    summary = pd.read_csv(run_dir / "summary.csv")
    assert set(summary["proto"]) == {"plain", "plain-tfo"}
    assert (summary["n"] == 2).all() and (summary["failed"] == 0).all()
    # Never faster than physics allows (one-sided); how close to theory is the reference run's
    # figure (README), not something to assert on a shared, noisy test machine. What is exact:
    # every measured connection took the theory's round trips, counted from its capture.
    assert (summary["error_ms"] > -0.5).all(), summary.to_string()
    records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    counted = count_from_pcaps(records, run_dir)
    assert len(counted) == sum(not r["warmup"] for r in records) == 16  # 8 points x 2
    for row in counted:
        assert (row["rt_send"], row["rt_resp"]) == theory_rounds(row["proto"]), row
    assert (run_dir / "latency.png").stat().st_size > 10_000
    assert (run_dir / "records.jsonl").read_text().count("\n") == 8 * 3  # + 1 warm-up each
    # The endpoints ran under SCHED_FIFO below the delay line (testbed/apps/priority.py).
    assert {r["sched_policy"] for r in records} == {f"SCHED_FIFO:{ENDPOINT_RT_PRIORITY}"}
