"""idle: points that only wait, to measure what the runner and its executors cost.

Not part of ``all``: it measures no protocol. Each point sleeps (CPU-light, so two
workers on one small machine do not slow each other) and appends one line to
``networks.jsonl`` as emulation points do, so a distributed run carries the same kinds
of output back to the driver. ``tcpinc run idle --executor dask ...`` checks a cluster
without root; ``tcpinc bench scheduling`` times the dispatch overhead with it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.runner import RunContext

NAME = "idle"
NEEDS_ROOT = False
PROFILES = {"quick": {"points": 4, "seconds": 1.0}, "full": {"points": 40, "seconds": 2.0}}


def points(profile: str) -> list[dict[str, Any]]:
    grid = PROFILES[profile]
    return [{"i": i, "seconds": grid["seconds"]} for i in range(int(grid["points"]))]


def run_point(point: dict[str, Any], ctx: RunContext) -> list[dict[str, Any]]:
    start = time.time()
    time.sleep(float(point["seconds"]))
    with (ctx.run_dir / "networks.jsonl").open("a") as networks:
        networks.write(json.dumps({"tag": f"idle-{point['i']}"}) + "\n")
    return [{"t_start_wall": start, "slept_s": round(time.time() - start, 4)}]


def analyse(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "records.jsonl"
    records = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    frame = pd.DataFrame([{"i": r["i"], "slept_s": r["slept_s"],
                           "host": (r.get("worker") or {}).get("host")} for r in records],
                         columns=["i", "slept_s", "host"])
    frame.sort_values("i").to_csv(run_dir / "idle.csv", index=False)
    return {"points": len(frame)}
