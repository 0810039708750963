"""`tcpinc bench endpoints`: host time per flight per arm, beside the TEP's in-memory CPU.

Each arm runs its handshake and one request/response on the ``direct`` topology at a short
and a long RTT (per RTT one network, one warm-up, then N connections, both ends captured: the
latency experiment's measurement, experiments/common.py). The time split of
testbed/net/timesplit.py gives, for every flight of the critical chain, how long the sending
host held it: C1 is the client's SYN (nothing before it in the captures), S1 the server's
answer to it, C2 the client's next flight, and so on. Beside it the same TEP's handshake CPU
from the in-memory benchmark (testbed/teps/*/bench.py, no sockets, no processes): what is left
of a flight's host time once the CPU is taken away is the endpoint's overhead (process and
thread wake-ups, Python, the ENO hook's queue round trip). The two RTTs show what idleness
adds: between flights an endpoint waits about one RTT, and on the development VM every
flight's host time, CPU included, is longer after 200 ms of it than after 10 ms (the CPU comes
back cold), also with an endpoint that polls instead of sleeping (README, Results).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

# What the in-memory benchmark measures for each arm's TEP (None: no TEP).
CPU_VARIANT: dict[str, tuple[str, bool] | None] = {
    "plain": None, "tls-noeno": ("tls", False), "tls": ("tls", False),
    "tcpcrypt": ("tcpcrypt", False), "tcpcrypt-resume": ("tcpcrypt", True),
    "tls-noeno-resume": ("tls", True),
}
QUICK_ARMS = ("plain", "tls-noeno", "tls", "tcpcrypt")
RTTS_MS = (10.0, 200.0)


def flight_labels(hops: list[list[Any]]) -> list[str]:
    """C1, S1, C2, S2... for the chain's hops, in order."""
    counts = {"c2s": 0, "s2c": 0}
    labels = []
    for direction, _held, _path in hops:
        counts[direction] += 1
        labels.append(f"{'C' if direction == 'c2s' else 'S'}{counts[direction]}")
    return labels


def hop_medians(records: list[dict[str, Any]]) -> dict[str, float]:
    """Median host time per flight label over the records with a split; chains of another
    shape than the most common one (a fallback, a retransmission) are left out."""
    chains = [r["split_hops"] for r in records if r.get("split_hops")]
    if not chains:
        return {}
    shapes = [tuple(flight_labels(c)) for c in chains]
    common = max(set(shapes), key=shapes.count)
    same = [c for c, s in zip(chains, shapes, strict=True) if s == common]
    return {label: statistics.median(c[i][1] for c in same) for i, label in enumerate(common)}


def cpu_ms(arm: str, count: int) -> tuple[float | None, float | None]:
    """(client, server) handshake CPU in ms of the arm's TEP, in memory."""
    variant = CPU_VARIANT.get(arm)
    if variant is None:
        return None, None
    tep, resumed = variant
    if tep == "tls":
        from testbed.teps.tls import bench as tls_bench

        r = tls_bench.handshakes(count, resumed=resumed)
    else:
        from testbed.teps.tcpcrypt import bench as tcpcrypt_bench

        r = tcpcrypt_bench.bench_handshakes(count=count, resumed=resumed)
    return r["client_cpu_s_per_handshake"] * 1e3, r["server_cpu_s_per_handshake"] * 1e3


def measure_arm(arm: str, run_dir: Path, connections: int, backend: str,
                rtt_ms: float) -> dict[str, Any]:
    from experiments.common import Measurement, counts_for_arm, measure
    from experiments.runner import RunContext
    from topologies import PathShape

    ctx = RunContext(run_dir, "quick", connections, 1, backend)
    m = Measurement(proto=arm, path=PathShape(rtt_ms=rtt_ms), connections=connections)
    records = [r for r in measure(m, ctx, f"{arm}-{rtt_ms:g}ms") if counts_for_arm(r)]
    split = [r for r in records if r.get("split_error") is None and r.get("split_hops")]

    def median(key: str) -> float | None:
        values = [float(r[key]) for r in split if r.get(key) is not None]
        return statistics.median(values) if values else None

    return {"arm": arm, "rtt_ms": rtt_ms, "n": len(split), "split_empty": len(records) - len(split),
            "flights": hop_medians(split), "client_host_ms": median("client_host_ms"),
            "server_host_ms": median("server_host_ms"), "ttfb_ms": median("ttfb_ms"),
            "protocol_latency_ms": median("protocol_latency_ms")}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = ["host time per flight (median ms) beside in-memory handshake CPU (ms)",
             f"{'arm':<16} {'rtt':>5} {'n':>3} {'client':>7} {'server':>7} {'cpu C':>6} "
             f"{'cpu S':>6}  held per flight"]
    for row in rows:
        flights = " ".join(f"{k} {v:.3f}" for k, v in row["flights"].items() if k != "C1")
        lines.append(f"{row['arm']:<16} {row['rtt_ms']:>5g} {row['n']:>3} "
                     f"{_fmt(row['client_host_ms']):>7} "
                     f"{_fmt(row['server_host_ms']):>7} {_fmt(row['cpu_client_ms']):>6} "
                     f"{_fmt(row['cpu_server_ms']):>6}  {flights}")
    return "\n".join(lines)


def main(args: Any) -> None:
    import pandas as pd

    from testbed.net.shaping import choose_backend

    quick = bool(getattr(args, "quick", False))
    arms = QUICK_ARMS if quick else tuple(CPU_VARIANT)
    connections, count = (5, 50) if quick else (20, 300)
    backend = choose_backend(getattr(args, "link_backend", "auto"))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = Path(getattr(args, "out", "results/bench"))
    run_dir = out / f"endpoints-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for arm in arms:
        cpu = cpu_ms(arm, count)
        for rtt in RTTS_MS:
            row = measure_arm(arm, run_dir, connections, backend, rtt)
            row["cpu_client_ms"], row["cpu_server_ms"] = cpu
            rows.append(row)
    print(format_rows(rows))
    flat = [{**{k: v for k, v in r.items() if k != "flights"},
             **{f"held_{k}_ms": v for k, v in r["flights"].items()}} for r in rows]
    csv = out / f"endpoints-{stamp}.csv"
    pd.DataFrame(flat).to_csv(csv, index=False, float_format="%.4f")
    print(f"written: {csv} (captures and records: {run_dir})")
