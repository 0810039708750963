"""cost: what encryption costs the hosts, from the TEP benchmarks, gathered as an experiment.

Points: the in-memory handshake benchmark for every TEP variant (handshakes/s on
one core, client and server CPU per handshake), the loopback bulk transfer
for every transport (MB/s, CPU per side, bytes on the wire per application
byte), and the wake-up cost of an endpoint that sat idle (loopback ping-pong
after 0-200 ms of idleness, testbed/bench_wakeup.py; the latency report uses it
to explain why the endpoints' excess over theory grows with the RTT). Same code
as `tcpinc bench handshake|throughput|wakeup`; the analysis writes the tables and
a figure with server CPU per handshake and throughput side by side.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from experiments.runner import RunContext  # noqa: E402
from testbed import bench_teps, bench_wakeup  # noqa: E402

NAME = "cost"
PROFILES = {"quick": {"handshakes": 100, "mbytes": 32, "wakeup_rounds": 20},
            "full": {"handshakes": 1000, "mbytes": 256, "wakeup_rounds": 100}}


def points(profile: str) -> list[dict[str, Any]]:
    return ([{"bench": "handshake"}]
            + [{"bench": "throughput", "kind": kind} for kind in bench_teps.THROUGHPUT_KINDS]
            + [{"bench": "wakeup"}])


def run_point(point: dict[str, Any], ctx: RunContext) -> list[dict[str, Any]]:
    grid = PROFILES[ctx.profile]
    if point["bench"] == "handshake":
        return bench_teps.handshake_rows(ctx.repeat or grid["handshakes"])
    if point["bench"] == "wakeup":
        result = bench_wakeup.measure(rounds=grid["wakeup_rounds"], seed=ctx.seed)
        return [{"bench": "wakeup", **row} for row in result["rows"]]
    return [bench_teps.loopback_throughput(point["kind"], grid["mbytes"] * 2**20)]


def analyse(run_dir: Path) -> dict[str, Any]:
    records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    hs = pd.DataFrame([r for r in records if r["bench"] == "handshake"])
    tp = pd.DataFrame([r for r in records if r["bench"] == "throughput"])
    hs_cols = ["tep", "variant", "handshakes_per_s", "client_cpu_ms", "server_cpu_ms"]
    tp_cols = ["kind", "cipher", "mb_per_s", "sender_cpu_s", "receiver_cpu_s",
               "wire_bytes_per_app_byte"]
    hs[hs_cols].to_csv(run_dir / "handshake_cost.csv", index=False, float_format="%.4f")
    tp[tp_cols].to_csv(run_dir / "throughput.csv", index=False, float_format="%.4f")
    plot(hs, tp, run_dir / "cost.png")
    wakeup = pd.DataFrame([r for r in records if r["bench"] == "wakeup"])
    if not wakeup.empty:  # runs made before the wake-up point existed have none
        wakeup.drop(columns=["bench"]).to_csv(run_dir / "wakeup.csv", index=False)
    tls_full = hs[(hs["tep"].str.startswith("tls")) & (hs["variant"] == "full")]
    x25519 = hs[(hs["tep"] == "tcpcrypt-x25519") & (hs["variant"] == "fresh")]
    ratio = (float(tls_full["server_cpu_ms"].iloc[0]) / float(x25519["server_cpu_ms"].iloc[0])
             if len(tls_full) and len(x25519) else None)
    return {"handshake_rows": len(hs), "throughput_rows": len(tp), "wakeup_rows": len(wakeup),
            "tls_over_tcpcrypt_x25519_server_cpu": ratio}


def plot(hs: pd.DataFrame, tp: pd.DataFrame, path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = hs["tep"].str.replace(" (0x30, non-standard)", "", regex=False) + " " + hs["variant"]
    left.barh(labels, hs["server_cpu_ms"], color="#1b9e77")
    left.set_xlabel("server CPU per handshake (ms, in memory, one core)")
    left.invert_yaxis()
    left.grid(True, axis="x", alpha=0.3)
    right.bar(tp["kind"], tp["mb_per_s"], color="#7570b3")
    right.set_ylabel("bulk throughput over loopback (MB/s)")
    right.tick_params(axis="x", rotation=30)
    right.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
