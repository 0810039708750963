"""`tcpinc run ... --dry-run --workers N`: the projected wall time of a run on N workers.

Each point's time comes from the newest committed run of the same profile (its records'
``t_start_wall``: a point lasts from its first connection to the next point's first
connection, so network set-up and teardown are counted; the first point starts at the
run's ``started``; in a run whose points ran side by side, each point's own ``point_s``).
Points the current code has that the committed run lacks take the
median of the experiment's points. The projection list-schedules the points in the
runner's order on N workers (what Dask does with one ``tcpinc`` slot per worker), adds
the measured dispatch overhead per point, and the driver's analysis, which stays serial.
"""

from __future__ import annotations

import heapq
import importlib
import json
import statistics
from datetime import datetime
from pathlib import Path
from typing import Any

from testbed.errors import ConfigError

# Per-point cost of a Dask round trip (submit, pickled task, result with pcaps back to the
# driver): 12 ms measured by `tcpinc bench scheduling` on the 2-core VM at load ~2.4
# (README "More than one machine"), rounded up; machines starved for CPU pay more.
DISPATCH_S = 0.05


def _matches(record: dict[str, Any], point: dict[str, Any]) -> bool:
    return all(record.get(k) == v for k, v in point.items())


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def point_seconds(run_dir: Path) -> tuple[dict[str, float], float]:
    """{point key: seconds} of a finished run, and the seconds its analysis took."""
    meta = json.loads((run_dir / "metadata.json").read_text())
    keys = [k for k in (run_dir / "points.jsonl").read_text().splitlines() if k.strip()]
    points = [json.loads(k) for k in keys]
    records = [json.loads(x) for x in (run_dir / "records.jsonl").read_text().splitlines()]
    started, finished = _stamp(meta["started"]), _stamp(meta["finished"])
    if not points:
        return {}, finished - started
    if any(int(c.get("workers", 1)) > 1 for c in meta.get("concurrency", [])):
        # Points ran side by side (experiments/runner.py experiment_executor): their clocks
        # overlap, so each point's own time (``point_s``) stands for it.
        own = {point_key_of(r, points): float(r["point_s"]) for r in records if "point_s" in r}
        return {k: own.get(k, 0.0) for k in keys}, float(meta.get("analysis_s", 0.0))
    if not all("t_start_wall" in r for r in records):
        # No per-connection clock (benchmark points): share the run's time evenly.
        return {k: (finished - started) / len(keys) for k in keys}, 0.0
    first: dict[int, float] = {}
    last_end = started
    index = 0
    for record in records:
        while index < len(points) and not _matches(record, points[index]):
            index += 1
        if index == len(points):
            raise ConfigError(f"{run_dir}: records do not follow points.jsonl",
                              "project from an unmerged, unsharded run")
        first.setdefault(index, record["t_start_wall"])
        last_end = max(last_end, record["t_start_wall"] + (record.get("total_ms") or 0) / 1e3)
    bounds = [started] + [first.get(i, started) for i in range(1, len(points))] + [last_end]
    seconds = {keys[i]: max(bounds[i + 1] - bounds[i], 0.0) for i in range(len(points))}
    return seconds, max(finished - last_end, 0.0)


def point_key_of(record: dict[str, Any], points: list[dict[str, Any]]) -> str:
    """The points.jsonl line of the point a record belongs to ("" if none)."""
    for point in points:
        if _matches(record, point):
            return json.dumps(point, sort_keys=True)
    return ""


def newest_run(root: Path, name: str, profile: str) -> Path | None:
    runs = []
    for meta_path in (root / name).glob(f"*-{profile}/metadata.json"):
        meta = json.loads(meta_path.read_text())
        if meta.get("finished") and not meta.get("arguments", {}).get("shard"):
            runs.append((meta["finished"], meta_path.parent))
    return max(runs)[1] if runs else None


def makespan(durations: list[float], workers: int) -> float:
    """List scheduling in order: each point goes to the worker that frees up first."""
    free = [0.0] * workers
    for seconds in durations:
        heapq.heappush(free, heapq.heappop(free) + seconds)
    return max(free)


def project(name: str, profile: str, workers: int, root: Path) -> dict[str, Any]:
    from experiments.runner import EXPERIMENTS, point_key

    points = importlib.import_module(EXPERIMENTS[name]).points(profile)
    run = newest_run(root, name, profile)
    if run is None:
        return {"experiment": name, "from_run": None, "points": len(points),
                "note": f"no finished {profile} run under {root}: not projected"}
    measured, analysis = point_seconds(run)
    median = statistics.median(measured.values()) if measured else 0.0
    durations = [measured.get(point_key(p), median) for p in points]
    serial = sum(durations) + analysis
    wall = makespan([d + DISPATCH_S for d in durations], workers) + analysis
    return {"experiment": name, "from_run": str(run), "points": len(points),
            "estimated_points": sum(point_key(p) not in measured for p in points),
            "serial_s": round(serial, 1), "projected_s": round(wall, 1),
            "analysis_s": round(analysis, 1), "workers": workers}


def dry_run(names: list[str], profile: str, workers: int, root: Path) -> dict[str, Any]:
    """Print one JSON line per experiment and a total; runs nothing, writes nothing."""
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    rows = [project(n, profile, workers, root) for n in names]
    for row in rows:
        print(json.dumps(row))
    done = [r for r in rows if r["from_run"]]
    if not done:
        raise ConfigError(f"no finished {profile} run of {', '.join(names)} under {root}",
                          "project from a results directory that has one (--out)")
    serial = sum(r["serial_s"] for r in done)
    wall = sum(r["projected_s"] for r in done)
    total = {"total": True, "profile": profile, "workers": workers,
             "points": sum(r["points"] for r in done), "serial_min": round(serial / 60, 1),
             "projected_min": round(wall / 60, 1), "speedup": round(serial / wall, 2),
             "dispatch_s_per_point": DISPATCH_S,
             "not_projected": [r["experiment"] for r in rows if not r["from_run"]]}
    print(json.dumps(total))
    return total
