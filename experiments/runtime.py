"""Where a run's wall time went, per experiment, from its run directory alone.

The runner records each experiment's wall time (``duration_s``, summed over the sessions of a
resumed run), the analysis after its points (``analysis_s``) and how its points ran
(``concurrency``) in metadata.json, and each point's own wall time (``point_s``) in its
records. From those and the connections' own times this module splits an experiment into:

- ``points_wall_s``: the points' wall time (``duration_s`` minus the analysis);
- ``point_s``: the points' times added up (more than ``points_wall_s`` when points ran side
  by side);
- ``connections_s``: time inside connections (each record's ``total_ms``; a connection that
  timed out counts its ``timeout_s``), warm-ups included;
- ``timeouts_s``: the part of it spent in connections that never completed (a SYN black
  hole waiting out the client's timeout);
- ``setup_s``: ``point_s`` minus ``connections_s``: starting and stopping networks, boxes,
  servers, hooks, captures and clients, and the gaps between connections;
- ``cpu_s``: the CPU time the experiment took (the driver and every process it waited for:
  servers, clients, hooks, captures, delay lines, workers). On a machine of N cores an
  experiment takes at least ``cpu_s`` / N of wall time, whatever runs side by side.

``tcpinc run`` prints the table at the end of a run and REPORT.md carries it (``section``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from experiments.projection import point_key_of

COLUMNS = ("experiment", "points", "workers", "wall_s", "points_wall_s", "analysis_s",
           "point_s", "connections_s", "timeouts_s", "setup_s", "cpu_s")


def _connection_s(record: dict[str, Any]) -> tuple[float, float]:
    """(time inside the connection, the part that was a timeout) of one record, in s."""
    if record.get("total_ms") is not None:
        return float(record["total_ms"]) / 1e3, 0.0
    if "timed out" in str(record.get("error") or "").lower() and record.get("timeout_s"):
        return float(record["timeout_s"]), float(record["timeout_s"])
    return 0.0, 0.0


def _point_times(records: list[dict[str, Any]], keys: list[dict[str, Any]]) -> float:
    """The points' own times added up: each point's ``point_s`` once."""
    seen: dict[str, float] = {}
    for record in records:
        if "point_s" in record:
            seen.setdefault(point_key_of(record, keys), float(record["point_s"]))
    return sum(seen.values())


def experiment_time(run_dir: Path) -> dict[str, Any]:
    """The split above for one finished run directory (fields it lacks are None)."""
    meta = json.loads((run_dir / "metadata.json").read_text())
    marks = run_dir / "points.jsonl"
    keys = [json.loads(line) for line in marks.read_text().splitlines() if line.strip()] \
        if marks.exists() else []
    path = run_dir / "records.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] \
        if path.exists() else []
    wall, analysis = meta.get("duration_s"), meta.get("analysis_s")
    inside = [_connection_s(r) for r in records]
    point_s = _point_times(records, keys)
    timed = any("point_s" in r for r in records)
    # Benchmark points (cost, bulk, web) keep no per-connection times.
    has_conns = any("total_ms" in r for r in records)
    connections = sum(i for i, _ in inside)
    return {
        "experiment": meta.get("experiment", run_dir.parent.name), "run": run_dir.name,
        "points": meta.get("points_total", len(keys)),
        "workers": max((int(c.get("workers", 1)) for c in meta.get("concurrency", [])),
                       default=1),
        "wall_s": wall, "analysis_s": analysis,
        "points_wall_s": None if wall is None or analysis is None else round(wall - analysis, 1),
        "point_s": round(point_s, 1) if timed else None,
        "connections_s": round(connections, 1) if has_conns else None,
        "timeouts_s": round(sum(t for _, t in inside), 1) if has_conns else None,
        "setup_s": round(point_s - connections, 1) if timed and has_conns else None,
        "cpu_s": meta.get("cpu_s"),
    }


def run_times(runs: dict[str, Path]) -> list[dict[str, Any]]:
    """``experiment_time`` of each run, in the order given."""
    return [experiment_time(run) for run in runs.values()]


def table(rows: list[dict[str, Any]]) -> list[str]:
    """A Markdown table of ``run_times`` rows, with a total of the wall times."""
    def cell(value: Any) -> str:
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row[c]) for c in COLUMNS) + " |" for row in rows]
    total = sum(float(row["wall_s"] or 0.0) for row in rows)
    cpu = [float(row["cpu_s"]) for row in rows if row.get("cpu_s") is not None]
    lines.append(f"| total | | | {total:.1f} |" + " |" * (len(COLUMNS) - 5)
                 + (f" {sum(cpu):.1f} |" if cpu else " |"))
    return lines


def section(runs: dict[str, Path]) -> list[str]:
    """REPORT.md: where the wall time of the reported runs went."""
    if not runs:
        return []
    return ["## Run time", "",
            "Per experiment (`metadata.json` and each record's `point_s`, "
            "experiments/runtime.py): `wall_s` = `points_wall_s` + `analysis_s`; `point_s` "
            "adds the points' own times (above `points_wall_s` where `workers` > 1: points "
            "side by side); `connections_s` is time inside connections, warm-ups included, "
            "of which `timeouts_s` waited out a client timeout; `setup_s` = `point_s` - "
            "`connections_s` (networks, boxes, servers, hooks, captures, clients, gaps); "
            "`cpu_s` is the CPU it took, all its processes together (blank in runs made "
            "before it was recorded). "
            "Times are the machine's at the time of the run (the load is not recorded).", "",
            *table(run_times(runs)), ""]
