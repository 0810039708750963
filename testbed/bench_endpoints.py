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

A second table sets each encrypted arm's host time above plain TCP's (client plus server, the
same RTT) beside its floor on this machine: the cold CPU on the chain, plus, for each flight
the arm's chain has beyond plain TCP's, what one wake-up after an RTT of idleness costs beyond
a warm one (testbed/bench_wakeup.py, measured in the same run). Where the floor alone is above
the 1.5 ms host-time target of the latency experiment (README, Results), no change to the
endpoints' harness can meet that target on this machine; where it is below, the difference
is what the rest of the harness may spend.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Sequence
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
# The latency experiment's host-time target: an encrypted arm's median TTFB excess over theory
# at most this much above plain TCP's, at every RTT (README, Results).
HOST_TARGET_MS = 1.5


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


def chain_cold_rows(arms: Sequence[str], idles_ms: Iterable[float], count: int
                    ) -> list[dict[str, Any]]:
    """Per arm with a TEP and per idle time: the TEP's CPU on the critical chain (``cpu_ms``)
    with that much sleep before each flight, from ``count`` handshakes. Arms that run the
    same TEP variant (tls and tls-noeno) share one measurement."""
    done: dict[tuple[tuple[str, bool], float], tuple[float | None, float | None]] = {}
    rows = []
    for idle in idles_ms:
        for arm in arms:
            variant = CPU_VARIANT.get(arm)
            if variant is None:
                continue
            if (variant, idle) not in done:
                done[(variant, idle)] = cpu_ms(arm, count, idle / 1e3)
            client, server = done[(variant, idle)]
            rows.append({"arm": arm, "idle_ms": idle, "client_chain_cold_ms": client,
                         "server_chain_cold_ms": server})
    return rows


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


def floor_rows(rows: list[dict[str, Any]], wake_us: dict[float, float]
               ) -> list[dict[str, Any]]:
    """Each encrypted arm's host time above plain TCP's beside its floor (module docstring).

    ``wake_us``: the wake-up ping's median round trip (us) per idle gap in ms, with gap 0 and
    each RTT of the rows. Arms without cold CPU or without a plain row at their RTT are left
    out, as are rows whose host time has no split."""
    plain = {r["rtt_ms"]: r for r in rows if r["arm"] == "plain"}
    out = []
    for row in rows:
        base = plain.get(row["rtt_ms"])
        cold_c, cold_s = row.get("cold_client_ms"), row.get("cold_server_ms")
        if base is None or cold_c is None or cold_s is None or row is base:
            continue
        cold = float(cold_c) + float(cold_s)
        hosts = (row["client_host_ms"], row["server_host_ms"],
                 base["client_host_ms"], base["server_host_ms"])
        extra = len(row["flights"]) - len(base["flights"])
        cold_wake_ms = max(wake_us[row["rtt_ms"]] - wake_us[0.0], 0.0) / 1e3
        floor = cold + max(extra, 0) * cold_wake_ms
        over = None if None in hosts else hosts[0] + hosts[1] - hosts[2] - hosts[3]
        out.append({"arm": row["arm"], "rtt_ms": row["rtt_ms"], "over_plain_ms": over,
                    "cold_ms": cold, "extra_flights": extra,
                    "cold_wake_ms": cold_wake_ms, "floor_ms": floor,
                    "floor_over_target_ms": floor - HOST_TARGET_MS})
    return out


def format_floor(floors: list[dict[str, Any]], wake_us: dict[float, float]) -> str:
    gaps = ", ".join(f"{wake_us[g]:.0f} us after {g:g} ms" for g in sorted(wake_us))
    lines = [f"host time above plain TCP's (client + server, ms) and its floor on this machine: "
             f"cold CPU on the chain + per flight beyond plain TCP's one cold wake-up beyond a "
             f"warm one (wake-up ping: {gaps}); target {HOST_TARGET_MS:g} ms",
             f"{'arm':<16} {'rtt':>5} {'over plain':>10} {'cold':>6} {'+flights':>8} "
             f"{'floor':>6}  verdict"]
    for f in floors:
        if f["floor_over_target_ms"] > 0:
            verdict = (f"floor {f['floor_over_target_ms']:.3f} above the target: not reachable "
                       "by any harness here")
        else:
            verdict = f"floor under the target: {-f['floor_over_target_ms']:.3f} left for the rest"
        lines.append(f"{f['arm']:<16} {f['rtt_ms']:>5g} {_fmt(f['over_plain_ms']):>10} "
                     f"{f['cold_ms']:>6.3f} {f['extra_flights']:>8d} {f['floor_ms']:>6.3f}  "
                     f"{verdict}")
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
    from testbed import bench_wakeup

    # Every gap of a round follows every other in random order: ~0.2 s per round here.
    wake = bench_wakeup.measure(gaps_ms=(0.0, *RTTS_MS), rounds=10 if quick else 30)
    wake_us = {float(r["gap_ms"]): float(r["median_us"]) for r in wake["rows"]}
    floors = floor_rows(rows, wake_us)
    print(format_floor(floors, wake_us))
    flat = [{**{k: v for k, v in r.items() if k != "flights"},
             **{f"held_{k}_ms": v for k, v in r["flights"].items()}} for r in rows]
    csv = out / f"endpoints-{stamp}.csv"
    pd.DataFrame(flat).to_csv(csv, index=False, float_format="%.4f")
    floor_csv = out / f"endpoints-{stamp}-floor.csv"
    pd.DataFrame(floors).to_csv(floor_csv, index=False, float_format="%.4f")
    print(f"written: {csv}, {floor_csv} (captures and records: {run_dir})")
