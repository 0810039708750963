"""`tcpinc bench endpoints`: host time per flight per arm, beside the TEP's in-memory CPU.

Each arm runs its handshake and one request/response on the ``direct`` topology at a short
and a long RTT (per RTT one network, one warm-up, then N connections, both ends captured: the
latency experiment's measurement, experiments/common.py). The time split of
testbed/net/timesplit.py gives, for every flight of the critical chain, how long the sending
host held it: C1 is the client's SYN (nothing before it in the captures), S1 the server's
answer to it, C2 the client's next flight, and so on. Beside it the same TEP's handshake CPU
from the in-memory benchmark (testbed/teps/*/bench.py, no sockets, no processes), counted as
the critical chain holds it (``cpu_ms``), twice: warm (handshakes back to back) and cold (each
flight after one RTT of sleep, as on the path).
What is left of a side's host time once the cold CPU is taken away (``left``) is the
endpoint's overhead: process and thread wake-ups, the application's own work (plain TCP's
host time), the ENO hook's queue round trip. The cold figure is the point: on the
development VM a flight's CPU after 10 ms or more of idleness is 2-5x its warm figure, in
OpenSSL's C as much as in Python (an ECDSA signature 49 -> 250 us, an X25519 exchange
105 -> 270 us; README, Results), and no endpoint that sleeps between flights avoids it.
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


def cpu_ms(arm: str, count: int, idle_s: float = 0.0) -> tuple[float | None, float | None]:
    """(client, server) CPU in ms of the arm's TEP handshake in memory, counted as the path's
    critical chain holds it: every server flight, and the client's flights after its first
    (the ClientHello or Init1 is made while the SYN travels, testbed/earlytep.py and
    testbed/apps/proto_tls_plain.py; a resumption's SYN suboption precedes the SYN).
    ``idle_s``: each flight follows that much sleep (cold, as on a path of that RTT)."""
    variant = CPU_VARIANT.get(arm)
    if variant is None:
        return None, None
    tep, resumed = variant
    if tep == "tls":
        from testbed.teps.tls import bench as tls_bench

        r = tls_bench.handshakes(count, resumed=resumed, idle_s=idle_s)
    else:
        from testbed.teps.tcpcrypt import bench as tcpcrypt_bench

        r = tcpcrypt_bench.bench_handshakes(count=count, resumed=resumed, idle_s=idle_s)
    return on_chain_ms(r["client_cpu_s_per_flight"], r["server_cpu_s_per_flight"])


def on_chain_ms(client: list[float], server: list[float]) -> tuple[float, float]:
    """Per-flight CPU seconds -> (client, server) ms on the critical chain (see cpu_ms)."""
    return sum(client[1:]) * 1e3, sum(server) * 1e3


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


def _left(host: float | None, cpu: float | None) -> float | None:
    return None if host is None or cpu is None else host - cpu


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = ["host time per side (median ms) beside the TEP's in-memory handshake CPU on the "
             "critical chain (ms), warm and after one RTT of idleness before each flight "
             "(cold); left = host - cold",
             f"{'arm':<16} {'rtt':>5} {'n':>3} {'client':>7} {'server':>7} {'cpu C':>6} "
             f"{'cpu S':>6} {'cold C':>6} {'cold S':>6} {'left C':>6} {'left S':>6}"
             "  held per flight"]
    for row in rows:
        flights = " ".join(f"{k} {v:.3f}" for k, v in row["flights"].items() if k != "C1")
        cold_c, cold_s = row.get("cold_client_ms"), row.get("cold_server_ms")
        lines.append(f"{row['arm']:<16} {row['rtt_ms']:>5g} {row['n']:>3} "
                     f"{_fmt(row['client_host_ms']):>7} "
                     f"{_fmt(row['server_host_ms']):>7} {_fmt(row['cpu_client_ms']):>6} "
                     f"{_fmt(row['cpu_server_ms']):>6} {_fmt(cold_c):>6} {_fmt(cold_s):>6} "
                     f"{_fmt(_left(row['client_host_ms'], cold_c)):>6} "
                     f"{_fmt(_left(row['server_host_ms'], cold_s)):>6}  {flights}")
    return "\n".join(lines)


def main(args: Any) -> None:
    import pandas as pd

    from testbed.net.shaping import choose_backend

    quick = bool(getattr(args, "quick", False))
    arms = QUICK_ARMS if quick else tuple(CPU_VARIANT)
    # Cold handshakes sleep one RTT before each flight: few of them (a TLS one at 200 ms RTT
    # sleeps 1.2 s).
    connections, count, cold_count = (5, 50, 3) if quick else (20, 300, 10)
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
            row["cold_client_ms"], row["cold_server_ms"] = cpu_ms(arm, cold_count, rtt / 1e3)
            rows.append(row)
    print(format_rows(rows))
    flat = [{**{k: v for k, v in r.items() if k != "flights"},
             **{f"held_{k}_ms": v for k, v in r["flights"].items()}} for r in rows]
    csv = out / f"endpoints-{stamp}.csv"
    pd.DataFrame(flat).to_csv(csv, index=False, float_format="%.4f")
    print(f"written: {csv} (captures and records: {run_dir})")
