"""`tcpinc bench scheduling`: what the dask executor costs per point.

Two worker processes (``LocalCluster``, one thread and ``tcpinc=1`` each, as the README
starts real workers) run the CPU-light ``idle`` experiment through the runner, so every
cost of a distributed point is in the figure: the pickled task, the worker's code check,
its scratch directory, the result and files sent back, the driver writing the run
directory. Overhead per point = (wall time - the ideal schedule of the points' own
times) x workers / points; it is set beside the point's own time and the median point
time of the newest committed full run.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

WORKERS = 2


def _own_seconds(run_dir: Path) -> list[float]:
    lines = (run_dir / "records.jsonl").read_text().splitlines()
    return [float(json.loads(x)["slept_s"]) for x in lines]


def _full_run_median(root: Path) -> float | None:
    from experiments.projection import newest_run, point_seconds

    times: list[float] = []
    for name in ("latency", "roundtrips", "fallback", "loss"):
        run = newest_run(root, name, "full")
        if run is not None:
            times.extend(point_seconds(run)[0].values())
    return statistics.median(times) if times else None


def measure(profile: str, results: Path) -> dict[str, Any]:
    from distributed import LocalCluster

    from experiments import idle
    from experiments.dask_executor import DaskExecutor
    from experiments.projection import makespan
    from experiments.runner import RunContext, run_points

    with LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                      resources={"tcpinc": 1}, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster, \
            tempfile.TemporaryDirectory(prefix="tcpinc-bench-") as tmp:
        t0 = time.monotonic()
        executor = DaskExecutor.connect(cluster.scheduler_address, None)
        executor.check(["idle"], "auto", needs_root=False)
        connect_s = time.monotonic() - t0
        run_dir = Path(tmp)
        ctx = RunContext(run_dir, profile, None, 1, "auto")
        try:
            t1 = time.monotonic()
            run_points("idle", idle.points(profile), ctx, {"link_backend": "auto"}, executor)
            wall = time.monotonic() - t1
        finally:
            executor.close()
        own = _own_seconds(run_dir)
    ideal = makespan(own, WORKERS)
    per_point = (wall - ideal) * WORKERS / len(own)
    full_median = _full_run_median(results)
    return {"workers": WORKERS, "points": len(own), "point_s": round(statistics.mean(own), 4),
            "wall_s": round(wall, 3), "ideal_s": round(ideal, 3),
            "connect_s": round(connect_s, 3), "overhead_ms_per_point": round(per_point * 1e3, 1),
            "overhead_pct_of_point": round(100 * per_point / statistics.mean(own), 2),
            "full_run_median_point_s": None if full_median is None else round(full_median, 2),
            "overhead_pct_of_full_run_point": None if not full_median
            else round(100 * per_point / full_median, 3)}


def main(args: Any) -> None:
    result = measure("quick" if getattr(args, "quick", False) else "full", Path("results"))
    print(json.dumps(result))
    out = Path(getattr(args, "out", "results/bench"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "scheduling.json").write_text(json.dumps(result, indent=1) + "\n")
