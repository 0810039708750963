"""latency: time to first response byte vs RTT, for every protocol available.

Each point is one protocol at one RTT on the ``direct`` topology (the arms of
one RTT share one network), one client and one server process, a warm-up
connection (it fetches the TFO cookie where TFO is used, seeds resumption
tickets and takes the processes' first-use costs; it is recorded with
``warmup: true`` and left out of the statistics), then ``repeat`` sequential
connections, each a 12-byte request and a 1 KiB response,
captured on the client's and on the server's interface. Each connection's
time to first byte is split from the two captures (testbed/net/timesplit.py) into
the time its flights spent on the path (``network_ms`` = ``protocol_latency_ms``,
what the design costs on that path on any machine) and the time each host held
them (``client_host_ms``, ``server_host_ms``: the implementation's cost). The
analysis draws the median TTFB, its p5-p95 band, the median protocol latency and
the theory line of docs/protocols.md §5 per protocol; ``excess.csv`` gives per
point the TTFB's and the protocol latency's distance from theory and the host
times behind the difference (experiments/timing.py), and every run carries the
fidelity check of experiments/timing.py in its metadata.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from experiments import plotting, timing
from experiments.common import (
    NetworkPool,
    counts_for_arm,
    measure,
    pooled_applied_rtt,
    rtt_grid,
    rtt_measurement,
)
from experiments.runner import RunContext
from experiments.theory import THEORY_RTTS, ttfb_ms
from testbed.apps.transport import TRANSPORTS

NAME = "latency"
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"rtts": [10, 50, 100, 200], "repeat": 8},
    "full": {"rtts": [1, 2, 5, 10, 20, 50, 100, 150, 200], "repeat": 30},
}


# The quick profile keeps the arms the IETF 93 questions turn on; full runs every arm.
QUICK_ARMS = ("plain", "plain-tfo", "tcpcrypt", "tcpcrypt-resume", "tls", "tls-0rtt",
              "tls-noeno", "tls-noeno-tfo", "tls-noeno-0rtt-tfo")


CALIBRATION_ARM = timing.CALIBRATION_ARM  # runs in every latency run (fidelity check)


def protocols(profile: str = "full") -> list[str]:
    """Every protocol the apps speak that has a theory line (test-only TEPs have none)."""
    return [name for name in TRANSPORTS if name in THEORY_RTTS
            and (profile == "full" or name in QUICK_ARMS)]


def points(profile: str) -> list[dict[str, Any]]:
    grid = PROFILES[profile]
    return rtt_grid(grid["rtts"], protocols(profile))


# The arms of one RTT share one network (points() lists them one after the other); each arm
# still gets its own server, hooks, client and warm-up. Its delay lines report the applied
# RTT when it closes (networks.jsonl); the analysis puts it back on each point.
POOL = NetworkPool()


def tag(point: dict[str, Any]) -> str:
    return f"{point['proto']}-{point['rtt_ms']}ms"


def run_point(point: dict[str, Any], ctx: RunContext) -> list[dict[str, Any]]:
    repeat = ctx.repeat or PROFILES[ctx.profile]["repeat"]
    return measure(rtt_measurement(point, repeat), ctx, tag(point), POOL)


def close_run(ctx: RunContext) -> None:
    """End of the run (also an interrupted one): close the pooled network."""
    POOL.close(ctx)


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
    """Per (protocol, RTT): where the time beyond theory went, from the time split.

    ``error_ms`` is the median TTFB minus theory, ``protocol_error_ms`` the median protocol
    latency minus theory (what the path cost beyond the design's round trips), and
    ``client_host_ms`` / ``server_host_ms`` the median host times that make up the rest;
    ``eno_query_ms`` is the wait for the hook's verdict after the TCP handshake (ENO arms),
    part of the client's host time. ``split_empty`` counts connections without a split."""
    records = records[records.apply(lambda r: counts_for_arm(r.to_dict()), axis=1)]
    ok = records[records["bytes_ok"].astype(bool)].copy()
    if ok.empty:
        return pd.DataFrame()
    theory = ok.apply(lambda r: ttfb_ms(str(r["proto"]), float(r["rtt_ms"])), axis=1)
    ok["error_ms"] = ok["ttfb_ms"] - theory
    phases = ok["phases_ms"].apply(lambda p: p if isinstance(p, dict) else {})
    connected = phases.apply(lambda p: p.get("tcp_connected"))
    verdict = phases.apply(lambda p: p.get("eno_result"))
    ok["eno_query_ms"] = verdict.astype(float) - connected.astype(float)
    table = ok.groupby(["proto", "rtt_ms"])[["error_ms", "eno_query_ms"]].median().reset_index()
    split = timing.split_table(ok)
    if split.empty:
        return table.sort_values(["proto", "rtt_ms"])
    cols = ["proto", "rtt_ms", "protocol_error_ms", "client_host_ms", "server_host_ms",
            "host_p95_ms", "split_empty"]
    table = table.merge(split[cols], on=["proto", "rtt_ms"], how="left")
    return table[["proto", "rtt_ms", "error_ms", *cols[2:], "eno_query_ms"]].sort_values(
        ["proto", "rtt_ms"])


CONNECTION_COLUMNS = ["proto", "rtt_ms", "ttfb_ms", "connect_ms", "bytes_ok", "warmup",
                      "outcome", "error", "conn", "local_port", "t_start_wall", "network_ms",
                      "client_host_ms", "server_host_ms", "protocol_latency_ms", "split_error"]


def analyse(run_dir: Path) -> dict[str, Any]:
    records = pd.read_json(run_dir / "records.jsonl", lines=True)
    pooled = pooled_applied_rtt(run_dir)
    missing = records["applied_rtt_ms"].isna()
    if missing.any():
        records.loc[missing, "applied_rtt_ms"] = [
            pooled.get(tag({"proto": p, "rtt_ms": r}))
            for p, r in zip(records.loc[missing, "proto"], records.loc[missing, "rtt_ms"],
                            strict=True)]
    has_split = "split_error" in records  # runs made before the split have none
    for col in CONNECTION_COLUMNS:
        if col not in records:
            records[col] = None
    records[CONNECTION_COLUMNS].to_csv(run_dir / "connections.csv", index=False)
    measured = records[records.apply(lambda r: counts_for_arm(r.to_dict()), axis=1)]
    summary = summarise(records)
    split = timing.split_table(measured[measured["bytes_ok"].astype(bool)]) if has_split \
        else pd.DataFrame()
    if not split.empty:
        summary = summary.merge(split[["proto", "rtt_ms", "protocol_latency_ms",
                                       "protocol_error_ms", "host_median_ms", "host_p95_ms",
                                       "split_empty"]], on=["proto", "rtt_ms"], how="left")
    summary.to_csv(run_dir / "summary.csv", index=False, float_format="%.3f")
    excess(records if has_split else records.drop(columns=["split_error"])).to_csv(
        run_dir / "excess.csv", index=False, float_format="%.3f")
    timing.host_table(measured).to_csv(run_dir / "host_time.csv", index=False,
                                       float_format="%.3f")
    plotting.latency_plot(summary, run_dir / "latency.png")
    check = timing.fidelity(summary, run_dir)
    timing.record_fidelity(run_dir, check)
    errors = timing.split_errors(measured)
    return {
        "points": len(summary),
        "connections": int(summary["n"].sum()),
        "failed": int(summary["failed"].sum()),
        "max_abs_error_ms": float(summary["error_ms"].abs().max()),
        "max_abs_protocol_error_ms": None if split.empty
        else float(split["protocol_error_ms"].abs().max()),
        "split_empty": sum(errors.values()),
        "noisy": check["noisy"],
        "fidelity": check["reasons"] or "passed",
    }
