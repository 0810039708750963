"""Executors: argument handling, the worker-side point task, projections, and a real Dask
LocalCluster running the CPU-light ``idle`` experiment (no root needed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from experiments import executors, projection
from experiments.dask_executor import check_address, ssh_cluster_options, ssh_hosts
from experiments.executors import PointResult, PointTask, relocate, run_point_task
from experiments.runner import worker_summary
from testbed.errors import ConfigError


def assert_user_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tcpinc: error: "), proc.stderr
    for word in words:
        assert word in lines[0]


def in_process(capsys: pytest.CaptureFixture[str], *args: str
               ) -> subprocess.CompletedProcess[str]:
    """The CLI in this process (no interpreter start-up): exit code, stdout, stderr."""
    from testbed.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)


@pytest.mark.parametrize("argv, words", [
    (["--scheduler", "tcp://127.0.0.1:8786"], ["--executor dask"]),
    (["--executor", "dask"], ["--scheduler", "--ssh"]),
    (["--executor", "dask", "--scheduler", "tcp://a:1", "--ssh", "a"], ["exactly one"]),
    (["--executor", "dask", "--scheduler", "127.0.0.1:8786"], ["bad scheduler address"]),
    (["--executor", "dask", "--ssh", "lab1,,lab2"], ["bad --ssh host list"]),
    (["--executor", "dask", "--ssh", "lab1,lab1"], ["twice"]),
    (["--executor", "dask", "--scheduler", "tcp://a:1", "--retries", "-1"], ["--retries"]),
    (["--workers", "2"], ["--dry-run"]),
])
def test_bad_executor_arguments_fail_in_one_line(tmp_path: Path, argv: list[str],
                                                 words: list[str],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    proc = in_process(capsys, "run", "idle", "--quick", "--out", str(tmp_path), *argv)
    assert_user_error(proc, *words)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_scheduler_fails_in_one_line_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proc = in_process(capsys, "run", "idle", "--quick", "--out", str(tmp_path),
                      "--executor", "dask", "--scheduler", "tcp://127.0.0.1:9",
                      "--connect-timeout", "2")
    assert_user_error(proc, "cannot reach the Dask scheduler at tcp://127.0.0.1:9")
    assert list(tmp_path.iterdir()) == []


def test_ssh_form_lists_the_first_host_as_scheduler_and_worker() -> None:
    hosts = ssh_hosts(" lab1, root@lab2 ")
    assert hosts == ["lab1", "root@lab2"]
    options = ssh_cluster_options(hosts, "/opt/tcpinc/.venv/bin/python")
    assert options["hosts"] == ["lab1", "lab1", "root@lab2"]
    assert options["worker_options"] == {"nthreads": 1, "resources": {"tcpinc": 1}}
    assert options["remote_python"] == "/opt/tcpinc/.venv/bin/python"
    assert check_address("tcp://10.0.0.1:8786") == "tcp://10.0.0.1:8786"
    with pytest.raises(ConfigError):
        check_address("tcp://10.0.0.1")


def test_point_task_returns_what_the_point_wrote_and_paths_move_to_the_run_dir(
        tmp_path: Path) -> None:
    task = PointTask("idle", {"i": 3, "seconds": 0.0}, "quick", None, 1, "userspace",
                     executors.code_identity())
    result = run_point_task(task)
    assert result.appended == {"networks.jsonl": json.dumps({"tag": "idle-3"}) + "\n"}
    assert result.worker["link_backend"] == "userspace" and result.worker["address"] == "local"
    assert not Path(result.scratch).exists()  # the worker keeps nothing
    moved = PointResult({"i": 1}, [{"pcap": result.scratch + "/pcaps/a.pcap", "x": "y"}],
                        {}, 0.0, {"networks.jsonl": f'{{"p": "{result.scratch}/pcaps/a"}}\n'},
                        {}, result.scratch)
    relocate(moved, tmp_path / "run")
    assert moved.records == [{"pcap": str(tmp_path / "run" / "pcaps" / "a.pcap"), "x": "y"}]
    assert moved.appended["networks.jsonl"] == f'{{"p": "{tmp_path}/run/pcaps/a"}}\n'


def test_point_task_refuses_other_project_code() -> None:
    task = PointTask("idle", {"i": 0, "seconds": 0.0}, "quick", None, 1, "userspace",
                     "tcpinc-testbed 0.0.9 commit 000000000000 code 0")
    with pytest.raises(ConfigError, match="the driver tcpinc-testbed 0.0.9"):
        run_point_task(task)


def test_workers_that_disagree_are_flagged(tmp_path: Path) -> None:
    rows = [{"i": 0, "worker": {"kernel": "6.1", "link_backend": "netem", "address": "a"}},
            {"i": 1, "worker": {"kernel": "6.8", "link_backend": "netem", "address": "b"}}]
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = worker_summary(tmp_path, [{"address": "a", "host": "h1"}],
                             [{"address": "b", "host": "h2"}])
    assert summary["worker_mismatch"] == {"kernel": ["6.1", "6.8"]}
    assert [w["host"] for w in summary["workers"]] == ["h1", "h2"]


def _fake_run(root: Path, name: str, profile: str, points: list[dict[str, Any]],
              starts: list[float], finished: str) -> Path:
    run = root / name / f"20260101T000000Z-{profile}"
    run.mkdir(parents=True)
    (run / "metadata.json").write_text(json.dumps({
        "started": "2026-01-01T00:00:00+00:00", "finished": finished,
        "arguments": {"profile": profile}}))
    (run / "points.jsonl").write_text("".join(json.dumps(p, sort_keys=True) + "\n"
                                              for p in points))
    base = projection._stamp("2026-01-01T00:00:00+00:00")
    records = [{**p, "t_start_wall": base + s, "total_ms": 500.0}
               for p, s in zip(points, starts, strict=True)]
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def test_point_times_come_from_the_records_clock(tmp_path: Path) -> None:
    points = [{"i": i, "seconds": 2.0} for i in range(3)]
    run = _fake_run(tmp_path, "idle", "full", points, [1.0, 4.0, 10.0],
                    "2026-01-01T00:00:12+00:00")
    seconds, analysis = projection.point_seconds(run)
    assert list(seconds.values()) == [4.0, 6.0, 0.5]  # to the next point; the last: its end
    assert analysis == pytest.approx(1.5)
    assert projection.makespan([4.0, 6.0, 0.5, 3.0], 2) == 7.5  # 3.0 waits for 4.5
    assert projection.makespan([4.0, 6.0, 0.5, 3.0], 1) == 13.5


def test_point_times_of_a_run_whose_points_ran_side_by_side_are_their_own(
        tmp_path: Path) -> None:
    points = [{"i": i, "seconds": 2.0} for i in range(3)]
    run = _fake_run(tmp_path, "idle", "full", points, [1.0, 1.0, 4.0],
                    "2026-01-01T00:00:12+00:00")
    meta = json.loads((run / "metadata.json").read_text())
    meta.update(concurrency=[{"executor": "local-concurrent", "workers": 2}], analysis_s=0.7)
    (run / "metadata.json").write_text(json.dumps(meta))
    records = [json.loads(x) for x in (run / "records.jsonl").read_text().splitlines()]
    for record, own in zip(records, [3.0, 5.0, 2.5], strict=True):
        record["point_s"] = own
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    seconds, analysis = projection.point_seconds(run)
    assert list(seconds.values()) == [3.0, 5.0, 2.5] and analysis == 0.7


def test_dry_run_projects_from_the_committed_full_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proc = in_process(capsys, "run", "all", "--full", "--dry-run", "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    total = rows[-1]
    assert total["total"] and total["workers"] == 2
    projected = [r for r in rows[:-1] if r["from_run"]]
    assert {"latency", "roundtrips", "fallback", "loss", "cost"} <= \
        {r["experiment"] for r in projected}
    assert total["points"] == sum(r["points"] for r in projected)
    assert total["not_projected"] == [r["experiment"] for r in rows[:-1] if not r["from_run"]]
    assert 1.0 < total["speedup"] <= 2.0
    assert not any(Path("results").glob("*/*-full/failed.jsonl"))  # nothing run or written
    one = projection.project("roundtrips", "full", 1, Path("results"))
    assert one["projected_s"] == pytest.approx(one["serial_s"] + one["points"]
                                               * projection.DISPATCH_S, abs=0.2)
    missing = in_process(capsys, "run", "all", "--full", "--dry-run", "--out", str(tmp_path))
    assert_user_error(missing, "no finished full run")


# --- a real LocalCluster -------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """One worker process (restarted by its nanny when killed), ``tcpinc=1``; the
    scheduler gives a point up at the first death of its worker (allowed-failures 0), so
    the driver's own retries are what is tested."""
    import logging

    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                         resources={"tcpinc": 1}, dashboard_address=":0",
                         silence_logs=logging.ERROR) as local:
        yield local


def _executing(dask_worker: Any) -> list[str]:
    return [str(ts.key) for ts in dask_worker.state.executing]


def _kill_during_first_point(client: Any) -> tuple[str, int]:
    """SIGKILL the worker process while it runs a point: (its address, point index)."""
    pids = client.run(os.getpid)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for address, keys in client.run(_executing).items():
            if keys:
                time.sleep(0.3)  # well inside the 1 s point
                os.kill(pids[address], signal.SIGKILL)
                return address, int(keys[0].split("-")[2])
        time.sleep(0.05)
    raise AssertionError("no point started within 60 s")


def _run_with_kill(cluster: Any, tmp_path: Path, retries: int
                   ) -> tuple[subprocess.CompletedProcess[str], str, int]:
    from distributed import Client

    with Client(cluster) as client:
        client.wait_for_workers(1, timeout=60)
        driver = subprocess.Popen(
            [sys.executable, "-m", "testbed", "run", "idle", "--quick", "--out", str(tmp_path),
             "--run-id", "k", "--executor", "dask", "--scheduler", cluster.scheduler_address,
             "--retries", str(retries), "--connect-timeout", "60"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            killed, index = _kill_during_first_point(client)
            out, err = driver.communicate(timeout=120)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
    return subprocess.CompletedProcess(driver.args, driver.returncode, out, err), killed, index


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_dask_run_is_laid_out_like_a_local_run(tmp_path: Path, cluster: Any,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    remote = in_process(capsys, "run", "idle", "--quick", "--out", str(tmp_path / "d"),
                        "--run-id", "r", "--executor", "dask",
                        "--scheduler", cluster.scheduler_address, "--connect-timeout", "60")
    local = in_process(capsys, "run", "idle", "--quick", "--out", str(tmp_path / "l"),
                       "--run-id", "r")
    assert remote.returncode == 0 and local.returncode == 0, remote.stderr + local.stderr
    d, lo = tmp_path / "d" / "idle" / "r", tmp_path / "l" / "idle" / "r"
    assert sorted(p.name for p in d.iterdir()) == sorted(p.name for p in lo.iterdir())
    assert sorted(_lines(d / "networks.jsonl"), key=str) == \
        sorted(_lines(lo / "networks.jsonl"), key=str)
    assert (d / "points.jsonl").read_text() == (lo / "points.jsonl").read_text()
    meta = json.loads((d / "metadata.json").read_text())
    assert meta["finished"] and meta["failed_points"] == 0 and meta["worker_mismatch"] is None
    assert [w["resources"] for w in meta["workers"]] == [{"tcpinc": 1}]
    assert {r["worker"]["address"] for r in _lines(d / "records.jsonl")} == \
        {meta["workers"][0]["address"]}
    # Where a run's time went: each point's own seconds (an idle point sleeps 1 s) inside the
    # experiment's wall time, which a local run spends one point after the other.
    local_meta = json.loads((lo / "metadata.json").read_text())
    point_s = {r["i"]: r["point_s"] for r in _lines(lo / "records.jsonl")}
    assert all(s >= 1.0 for s in point_s.values()) and len(point_s) == 4
    # duration_s is rounded to 0.1 s and each point_s to 0.01 s (experiments/runner.py): four
    # points of 1.01 s measured 4.01 against a wall time of 4.04 recorded as 4.0 in a CI run.
    rounding = 0.05 + 0.005 * len(point_s)
    assert local_meta["duration_s"] + rounding >= sum(point_s.values()) > 0
    assert 0 <= local_meta["analysis_s"] <= local_meta["duration_s"]


def test_a_killed_worker_loses_only_its_point_which_is_retried(tmp_path: Path,
                                                               cluster: Any) -> None:
    proc, killed, index = _run_with_kill(cluster, tmp_path, retries=2)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "idle" / "k"
    records = _lines(run / "records.jsonl")
    assert sorted(r["i"] for r in records) == [0, 1, 2, 3]
    again = next(r for r in records if r["i"] == index)
    assert again["worker"]["attempt"] == 2 and again["worker"]["address"] != killed
    assert not (run / "failed.jsonl").exists()


def test_a_point_past_its_retries_is_recorded_failed_and_resumable(
        tmp_path: Path, cluster: Any, capsys: pytest.CaptureFixture[str]) -> None:
    proc, killed, index = _run_with_kill(cluster, tmp_path, retries=0)
    assert proc.returncode == 1
    assert "failed" in proc.stderr and "--run-id k" in proc.stderr
    run = tmp_path / "idle" / "k"
    failed = _lines(run / "failed.jsonl")
    assert index in [f["point"]["i"] for f in failed]
    assert all(f["reason"].startswith("KilledWorker") and f["attempts"] == 1 for f in failed)
    done = {json.loads(k)["i"] for k in (run / "points.jsonl").read_text().splitlines()}
    assert done | {f["point"]["i"] for f in failed} == {0, 1, 2, 3}
    assert json.loads((run / "metadata.json").read_text())["failed_points"] == len(failed)
    # The same --run-id, here on this machine, runs only what is missing.
    resumed = in_process(capsys, "run", "idle", "--quick", "--out", str(tmp_path),
                         "--run-id", "k")
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(r["i"] for r in _lines(run / "records.jsonl")) == [0, 1, 2, 3]


def test_the_report_flags_workers_that_disagree() -> None:
    from experiments.report import _workers_note

    mixed = {"workers": [{"host": "lab1"}, {"host": "lab2"}],
             "worker_mismatch": {"link_backend": ["netem", "userspace"]}}
    assert _workers_note(mixed) == (
        ", 2 workers on lab1, lab2 — **WARNING: the workers disagree (link_backend: netem, "
        "userspace); each record names its worker, compare only points of one kind**")
    assert _workers_note({**mixed, "worker_mismatch": None}) == ", 2 workers on lab1, lab2"
    assert _workers_note({"workers": [{"host": "lab1"}]}) == ""


def test_concurrent_executor_runs_each_group_in_order_in_its_own_process(
        tmp_path: Path) -> None:
    from experiments.executors import ConcurrentLocalExecutor
    from experiments.runner import RunContext, run_points

    executor = ConcurrentLocalExecutor("userspace", 2, group_key=lambda p: str(p["i"] % 2))
    ctx = RunContext(tmp_path, "quick", None, 1, "userspace")
    points = [{"i": i, "seconds": 0.0} for i in range(4)] + [{"i": 4, "seconds": "x"}]
    failed = run_points("idle", points, ctx, {"link_backend": "userspace"}, executor)
    assert failed == 1  # the point that raised is recorded; its group went on
    (failure,) = [json.loads(x) for x in (tmp_path / "failed.jsonl").read_text().splitlines()]
    assert failure["point"]["i"] == 4 and failure["reason"].startswith("ValueError")
    records = [json.loads(x) for x in (tmp_path / "records.jsonl").read_text().splitlines()]
    by_worker: dict[str, list[int]] = {}
    for record in records:
        by_worker.setdefault(record["worker"]["address"], []).append(record["i"])
    assert sorted(by_worker.values()) == [[0, 2], [1, 3]]
    assert f"local:{os.getpid()}" not in by_worker and all(
        a.startswith("local:") for a in by_worker)
    marks = (tmp_path / "points.jsonl").read_text().splitlines()
    assert sorted(json.loads(k)["i"] for k in marks) == [0, 1, 2, 3]
    tags = [json.loads(x)["tag"] for x in (tmp_path / "networks.jsonl").read_text().splitlines()]
    assert sorted(tags) == ["idle-0", "idle-1", "idle-2", "idle-3"]
    assert len(executor.workers()) == 2


def test_without_a_group_key_points_run_in_contiguous_chunks() -> None:
    from experiments.executors import ConcurrentLocalExecutor

    tasks = [PointTask("idle", {"i": i}, "quick", None, 1, "userspace", "c") for i in range(5)]
    groups = ConcurrentLocalExecutor("userspace", 2).groups(tasks)
    assert [[t.point["i"] for t in g] for g in groups] == [[0, 1, 2], [3, 4]]
    with pytest.raises(ConfigError, match="2 or more workers"):
        ConcurrentLocalExecutor("userspace", 1)


def test_keyed_groups_run_largest_first_each_in_the_points_order() -> None:
    from experiments.executors import ConcurrentLocalExecutor

    keys = ["a", "b", "b", "c", "c", "c", "b"]
    tasks = [PointTask("idle", {"i": i, "k": k}, "quick", None, 1, "userspace", "c")
             for i, k in enumerate(keys)]
    groups = ConcurrentLocalExecutor("userspace", 2, group_key=lambda p: p["k"]).groups(tasks)
    assert [[t.point["i"] for t in g] for g in groups] == [[1, 2, 6], [3, 4, 5], [0]]


def test_only_experiments_that_declare_it_run_points_side_by_side() -> None:
    from experiments import fallback, idle, latency
    from experiments.executors import ConcurrentLocalExecutor, LocalExecutor
    from experiments.runner import experiment_executor

    local = LocalExecutor("userspace")
    chosen, info = experiment_executor(latency, local)
    assert chosen is local and info["workers"] == 1
    chosen, info = experiment_executor(idle, local)
    assert chosen is local and info["workers"] == 1
    chosen, info = experiment_executor(fallback, local)
    assert isinstance(chosen, ConcurrentLocalExecutor) and info["workers"] == fallback.CONCURRENCY
    assert info["grouped_by"] == "middlebox" and chosen.group_key is fallback.group_key
    chosen, info = experiment_executor(fallback, local, serial=True)
    assert chosen is local and info == {"executor": "local", "workers": 1, "reason": "--serial"}
