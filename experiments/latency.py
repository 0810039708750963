"""latency: time to first response byte vs RTT, for every protocol available.

Each point is one protocol at one RTT on the ``direct`` topology: a fresh
network, one warm-up connection (it fetches the TFO cookie where TFO is used;
it is recorded with ``warmup: true`` and left out of the statistics), then
``repeat`` sequential connections, each a 12-byte request and a 1 KiB response,
captured on the client interface. The analysis draws the median, the p5-p95
band and the theory line of tcpinc-protocols.md §4 per protocol, and splits each
point's excess over theory (``excess.csv``) at the moment the client sent its
request: how late the request left against the theory's ``send`` RTTs (TCP
handshake through the hooks, the ENO verdict query, the TEP handshake) and how
late the response came back after it against ``resp - send`` RTTs (server and
response path). The two add up to the excess of each connection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from experiments import plotting
from experiments.common import Measurement, counts_for_arm, measure
from experiments.runner import RunContext
from experiments.theory import THEORY_RTTS, send_ms, ttfb_ms
from testbed.apps.transport import TRANSPORTS
from topologies import PathShape

NAME = "latency"
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"rtts": [10, 50, 100, 200], "repeat": 8},
    "full": {"rtts": [1, 2, 5, 10, 20, 50, 100, 150, 200], "repeat": 30},
}


# The quick profile keeps the arms the IETF 93 questions turn on; full runs every arm.
QUICK_ARMS = ("plain", "plain-tfo", "tcpcrypt", "tcpcrypt-resume", "tls", "tls-0rtt",
              "tls-noeno", "tls-noeno-tfo", "tls-noeno-0rtt-tfo")


def protocols(profile: str = "full") -> list[str]:
    """Every protocol the apps speak that has a theory line (test-only TEPs have none)."""
    return [name for name in TRANSPORTS if name in THEORY_RTTS
            and (profile == "full" or name in QUICK_ARMS)]


def points(profile: str) -> list[dict[str, Any]]:
    grid = PROFILES[profile]
    return [{"proto": p, "rtt_ms": r} for r in grid["rtts"] for p in protocols(profile)]


def run_point(point: dict[str, Any], ctx: RunContext) -> list[dict[str, Any]]:
    repeat = ctx.repeat or PROFILES[ctx.profile]["repeat"]
    m = Measurement(proto=point["proto"], path=PathShape(rtt_ms=float(point["rtt_ms"])),
                    connections=repeat)
    return measure(m, ctx, f"{point['proto']}-{point['rtt_ms']}ms")


def summarise(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (protocol, RTT); a point whose connections all failed still has its row."""
    records = records[records.apply(lambda r: counts_for_arm(r.to_dict()), axis=1)]
    rows = []
    for (proto, rtt), group in records.groupby(["proto", "rtt_ms"]):
        ok = group[group["bytes_ok"].astype(bool)]
        ttfb = ok["ttfb_ms"]
        theory = ttfb_ms(str(proto), float(rtt))
        median = ttfb.median()
        rows.append({
            "proto": proto, "rtt_ms": rtt, "n": len(ok), "failed": len(group) - len(ok),
            "ttfb_median_ms": median, "ttfb_p5_ms": ttfb.quantile(0.05),
            "ttfb_p95_ms": ttfb.quantile(0.95), "ttfb_p99_ms": ttfb.quantile(0.99),
            "ttfb_mean_ms": ttfb.mean(), "connect_median_ms": ok["connect_ms"].median(),
            "applied_rtt_ms": group["applied_rtt_ms"].median(),
            "theory_ms": theory,
            "error_ms": None if theory is None else median - theory,
            "within_1ms_2pct": None if theory is None or pd.isna(median)
            else bool(abs(median - theory) <= 1.0 + 0.02 * theory),
        })
    return pd.DataFrame(rows).sort_values(["proto", "rtt_ms"])


def excess(records: pd.DataFrame) -> pd.DataFrame:
    """Per (protocol, RTT): medians of where the time beyond theory went (module docstring).

    ``request_late_ms`` + ``response_late_ms`` is each connection's excess (medians need not
    add up exactly); ``connect_late_ms`` is the TCP handshake beyond one RTT (arms without
    TFO, whose connect() waits for the SYN-ACK) and ``eno_query_ms`` the wait for the hook's
    verdict after it (ENO arms)."""
    records = records[records.apply(lambda r: counts_for_arm(r.to_dict()), axis=1)]
    ok = records[records["bytes_ok"].astype(bool) & records["request_ms"].notna()].copy()
    if ok.empty:
        return pd.DataFrame()
    rtt = ok["rtt_ms"].astype(float)
    send = ok.apply(lambda r: send_ms(str(r["proto"]), float(r["rtt_ms"])), axis=1)
    theory = ok.apply(lambda r: ttfb_ms(str(r["proto"]), float(r["rtt_ms"])), axis=1)
    ok["request_late_ms"] = ok["request_ms"] - send
    ok["response_late_ms"] = ok["ttfb_ms"] - ok["request_ms"] - (theory - send)
    phases = ok["phases_ms"].apply(lambda p: p if isinstance(p, dict) else {})
    connected = phases.apply(lambda p: p.get("tcp_connected"))
    verdict = phases.apply(lambda p: p.get("eno_result"))
    tfo = ok["proto"].str.contains("tfo")
    ok["connect_late_ms"] = (ok["connect_ms"] - rtt).where(~tfo)
    ok["eno_query_ms"] = (verdict.astype(float) - connected.astype(float))
    cols = ["request_late_ms", "response_late_ms", "connect_late_ms", "eno_query_ms"]
    table = (ok.groupby(["proto", "rtt_ms"])[cols].median().reset_index()
             .sort_values(["proto", "rtt_ms"]))
    table.insert(2, "error_ms", (ok["ttfb_ms"] - theory).groupby(
        [ok["proto"], ok["rtt_ms"]]).median().to_numpy())
    return table


def analyse(run_dir: Path) -> dict[str, Any]:
    records = pd.read_json(run_dir / "records.jsonl", lines=True)
    records[["proto", "rtt_ms", "ttfb_ms", "connect_ms", "bytes_ok", "warmup", "outcome",
             "error", "conn", "local_port", "t_start_wall"]].to_csv(
        run_dir / "connections.csv", index=False
    )
    summary = summarise(records)
    summary.to_csv(run_dir / "summary.csv", index=False, float_format="%.3f")
    excess(records).to_csv(run_dir / "excess.csv", index=False, float_format="%.3f")
    plotting.latency_plot(summary, run_dir / "latency.png")
    return {
        "points": len(summary),
        "connections": int(summary["n"].sum()),
        "failed": int(summary["failed"].sum()),
        "max_abs_error_ms": float(summary["error_ms"].abs().max()),
    }
