"""cost: what encryption costs the hosts, from the TEP benchmarks, gathered as an experiment.

Points: the in-memory handshake benchmark for every TEP variant (handshakes/s on
one core, client and server CPU per handshake; for the variants the latency arms run, also
cold: each flight after 10 ms of idleness, ``*_cpu_cold_ms``), the same latency arms' TEP
CPU on the critical chain after 10 and after 200 ms of idleness (``floor_cpu.csv``, the
latency report's floor under the host time, testbed/bench_endpoints.py), the loopback bulk transfer
for every transport (MB/s, CPU per side, bytes on the wire per application
byte), and the wake-up cost of an endpoint that sat idle (loopback ping-pong
after 0-200 ms of idleness, testbed/bench_wakeup.py; the latency report uses it
to explain why the endpoints' excess over theory grows with the RTT), and what each
ENO datapath adds to a connection over plain TCP (packet intercept through the NFQUEUE
hook against the in-kernel bpf option; testbed/eno/bench.py). Same code as `tcpinc
bench handshake|throughput|wakeup|eno-hook`; the analysis writes the tables and a
figure with server CPU per handshake and throughput side by side (``eno_datapath.csv``
and ``eno_datapath.png`` for the datapaths).
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
from testbed import bench_endpoints, bench_teps, bench_wakeup  # noqa: E402

NAME = "cost"
PROFILES = {"quick": {"handshakes": 100, "cold_handshakes": 10, "mbytes": 32,
                      "wakeup_rounds": 20, "eno_rounds": 100, "floor_handshakes": 4},
            "full": {"handshakes": 1000, "cold_handshakes": 50, "mbytes": 256,
                     "wakeup_rounds": 100, "eno_rounds": 500, "floor_handshakes": 10}}
# The latency arms whose TEP the floor measures, after the idle times that bound the latency
# RTTs from below (cold CPU grows with idleness: 10 ms stands for 10-199 ms RTT). A TLS
# handshake sleeps 5 times: 1 s per handshake at 200 ms, about 9 s for the quick profile.
FLOOR_ARMS = ("tls", "tls-noeno", "tcpcrypt", "tcpcrypt-resume")
FLOOR_IDLE_MS = (10.0, 200.0)
# What the datapath table keeps of each side of `tcpinc bench eno-hook` (added = paired
# median over plain TCP in the same round of the interleaving).
ENO_PHASES = ("eno_tcp_connect", "eno_setup_until_result", "eno_until_tep_handshake_done")


def points(profile: str) -> list[dict[str, Any]]:
    return ([{"bench": "handshake"}]
            + [{"bench": "throughput", "kind": kind} for kind in bench_teps.THROUGHPUT_KINDS]
            + [{"bench": "wakeup"}, {"bench": "floor"}, {"bench": "eno-datapath"}])


def run_point(point: dict[str, Any], ctx: RunContext) -> list[dict[str, Any]]:
    grid = PROFILES[ctx.profile]
    if point["bench"] == "handshake":
        return bench_teps.handshake_rows(ctx.repeat or grid["handshakes"],
                                         cold_count=grid["cold_handshakes"])
    if point["bench"] == "eno-datapath":
        return eno_datapath_rows(grid["eno_rounds"])
    if point["bench"] == "floor":
        return [{"bench": "floor", **row} for row in bench_endpoints.chain_cold_rows(
            FLOOR_ARMS, FLOOR_IDLE_MS, grid["floor_handshakes"])]
    if point["bench"] == "wakeup":
        result = bench_wakeup.measure(rounds=grid["wakeup_rounds"], seed=ctx.seed)
        return [{"bench": "wakeup", **row} for row in result["rows"]]
    return [bench_teps.loopback_throughput(point["kind"], grid["mbytes"] * 2**20)]


def analyse(run_dir: Path) -> dict[str, Any]:
    records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    hs = pd.DataFrame([r for r in records if r["bench"] == "handshake"])
    tp = pd.DataFrame([r for r in records if r["bench"] == "throughput"])
    hs_cols = ["tep", "variant", "handshakes_per_s", "client_cpu_ms", "server_cpu_ms",
               *[c for c in ("client_cpu_cold_ms", "server_cpu_cold_ms", "cold_idle_ms")
                 if c in hs]]
    tp_cols = ["kind", "cipher", "mb_per_s", "sender_cpu_s", "receiver_cpu_s",
               "wire_bytes_per_app_byte"]
    hs[hs_cols].to_csv(run_dir / "handshake_cost.csv", index=False, float_format="%.4f")
    tp[tp_cols].to_csv(run_dir / "throughput.csv", index=False, float_format="%.4f")
    plot(hs, tp, run_dir / "cost.png")
    wakeup = pd.DataFrame([r for r in records if r["bench"] == "wakeup"])
    if not wakeup.empty:  # runs made before the wake-up point existed have none
        wakeup.drop(columns=["bench"]).to_csv(run_dir / "wakeup.csv", index=False)
    floor = pd.DataFrame([r for r in records if r["bench"] == "floor"])
    if not floor.empty:  # nor those made before the floor point
        floor[["arm", "idle_ms", "client_chain_cold_ms", "server_chain_cold_ms"]].to_csv(
            run_dir / "floor_cpu.csv", index=False, float_format="%.4f")
    tls_full = hs[(hs["tep"].str.startswith("tls")) & (hs["variant"] == "full")]
    x25519 = hs[(hs["tep"] == "tcpcrypt-x25519") & (hs["variant"] == "fresh")]
    ratio = (float(tls_full["server_cpu_ms"].iloc[0]) / float(x25519["server_cpu_ms"].iloc[0])
             if len(tls_full) and len(x25519) else None)
    return {"handshake_rows": len(hs), "throughput_rows": len(tp), "wakeup_rows": len(wakeup),
            "floor_rows": len(floor),
            "tls_over_tcpcrypt_x25519_server_cpu": ratio,
            "eno_datapath_rows": analyse_eno_datapath(records, run_dir)}


def eno_datapath_rows(rounds: int) -> list[dict[str, Any]]:
    """One row per datapath from the side-by-side bench (bpf only where it runs)."""
    from testbed.eno import bench as eno_bench

    result = eno_bench.compare(rounds, warmup=20 if rounds < 200 else 50)
    rows = []
    for datapath in ("nfqueue", "bpf"):
        side = result[datapath]
        if "unavailable" in side:
            continue
        row: dict[str, Any] = {
            "bench": "eno-datapath", "datapath": datapath, "rounds": side["rounds"],
            "plain_connect_median_ms": side["plain_connect"]["median_ms"],
            "nfqueue_rules": sum(side["nfqueue_rules"].values()),
        }
        for phase in ENO_PHASES:
            row[f"{phase}_added_median_ms"] = side[phase]["added_median_ms"]
            row[f"{phase}_added_p99_ms"] = side[phase]["added_p99_ms"]
        hooks = side.get("hooks", {})
        cpu = [h["cpu_us_per_packet"] for h in hooks.values() if h["cpu_us_per_packet"]]
        row["hook_cpu_us_per_packet"] = sum(cpu) / len(cpu) if cpu else None
        row["hook_packets"] = sum(h["packets"] for h in hooks.values()) if hooks else 0
        rows.append(row)
    return rows


def analyse_eno_datapath(records: list[dict[str, Any]], run_dir: Path) -> int:
    table = pd.DataFrame([r for r in records if r["bench"] == "eno-datapath"])
    if table.empty:  # runs made before the datapath point existed have none
        return 0
    table.drop(columns=["bench"]).to_csv(run_dir / "eno_datapath.csv", index=False,
                                         float_format="%.4f")
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(table)
    for i, row in enumerate(table.itertuples()):
        values = [getattr(row, f"{phase}_added_median_ms") for phase in ENO_PHASES]
        xs = [k + i * width for k in range(len(ENO_PHASES))]
        ax.bar(xs, values, width, label=f"{row.datapath}")
    ax.set_xticks([k + width * (len(table) - 1) / 2 for k in range(len(ENO_PHASES))])
    ax.set_xticklabels(["TCP connect", "ENO result", "TEP handshake done"])
    ax.set_ylabel("added over plain TCP, median (ms, 0 ms link)")
    ax.legend(title="ENO datapath")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / "eno_datapath.png", dpi=120)
    plt.close(fig)
    return len(table)


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
