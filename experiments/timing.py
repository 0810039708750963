"""The latency run's time split and fidelity check (analysis only: reads records, no network).

Time split
----------
Every record of a captured connection carries the split of testbed/net/timesplit.py
(``network_ms``, ``client_host_ms``, ``server_host_ms``, ``protocol_latency_ms`` or an empty
split with ``split_error``). ``split_table`` gives per (protocol, RTT) the medians and the
protocol latency's distance from theory; ``host_table`` gives per protocol the host time
per connection (median, p95): the implementation cost a deployment would also pay.

Fidelity check
--------------
A run's milliseconds hold only if the machine kept up. Two calibrations come with every
latency run: plain TCP at each of the run's RTTs (its TTFB excess over theory is pure
harness: kernel TCP has no think time) and the delay line's own report (the applied RTT
against the configured one, and how late it sent frames against their due time). The run is
``noisy`` when one of them crosses its threshold below; the verdict and the figures go into
metadata.json, the CLI's summary line and the top of the report section. The compiled line's
device stamps (testbed/net/delayline_c/txstamp.c: when frames sent after idleness reached
the device against their due time, and how many got there early) are reported beside them,
not judged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.theory import ttfb_ms

CALIBRATION_ARM = "plain"
# Thresholds of the fidelity check. Plain TCP's median TTFB beyond theory is the client's
# and server's processes waking up and running Python: the committed full reference run
# (results/latency/20261126T120036Z-full) measured +0.5..+1.0 ms at every RTT; beyond 1.5 ms
# the scheduler was holding processes.
PLAIN_EXCESS_MAX_MS = 1.5
# The delay line's applied RTT against the configured one (median of the point's frames).
APPLIED_RTT_ERROR_MAX_MS = 0.2
# The delay line's p99 lateness of its send calls against their planned release (the due
# time, less the send lead after idleness; delay line report, us).
LATENESS_P99_MAX_US = 200.0


def split_table(records: pd.DataFrame) -> pd.DataFrame:
    """Per (protocol, RTT): medians of the split, the protocol latency against theory, and
    how many connections have no split (``split_empty``)."""
    if "split_error" not in records:
        return pd.DataFrame()
    rows = []
    for (proto, rtt), group in records.groupby(["proto", "rtt_ms"]):
        done = group[group["split_error"].isna() & group["network_ms"].notna()]
        theory = ttfb_ms(str(proto), float(rtt))
        latency = done["protocol_latency_ms"].astype(float).median()
        host = (done["client_host_ms"] + done["server_host_ms"]).astype(float)
        rows.append({
            "proto": proto, "rtt_ms": rtt, "n_split": len(done),
            "split_empty": len(group) - len(done),
            "ttfb_median_ms": group["ttfb_ms"].median(),
            "protocol_latency_ms": latency, "theory_ms": theory,
            "protocol_error_ms": None if theory is None else latency - theory,
            "client_host_ms": done["client_host_ms"].astype(float).median(),
            "server_host_ms": done["server_host_ms"].astype(float).median(),
            "host_median_ms": host.median(), "host_p95_ms": host.quantile(0.95),
        })
    return pd.DataFrame(rows).sort_values(["proto", "rtt_ms"])


def host_table(records: pd.DataFrame) -> pd.DataFrame:
    """Per protocol over all RTTs: host time per connection (client + server), median/p95."""
    if "split_error" not in records:
        return pd.DataFrame()
    done = records[records["split_error"].isna() & records["network_ms"].notna()].copy()
    done["host_ms"] = (done["client_host_ms"] + done["server_host_ms"]).astype(float)
    rows = [{"proto": proto, "n": len(g), "host_median_ms": g["host_ms"].median(),
             "host_p95_ms": g["host_ms"].quantile(0.95),
             "client_host_median_ms": g["client_host_ms"].astype(float).median(),
             "server_host_median_ms": g["server_host_ms"].astype(float).median()}
            for proto, g in done.groupby("proto")]
    return pd.DataFrame(rows)


def split_errors(records: pd.DataFrame) -> dict[str, int]:
    """Connections whose split is empty, by reason."""
    if "split_error" not in records:
        return {}
    counts = records["split_error"].dropna().value_counts()
    return {str(k): int(v) for k, v in counts.items()}


def _directions(run_dir: Path) -> list[dict[str, Any]]:
    """Every link direction's applied-delay summary in the run (networks.jsonl)."""
    path = run_dir / "networks.jsonl"
    if not path.exists():
        return []
    return [direction for line in path.read_text().splitlines() if line.strip()
            for link in json.loads(line).get("applied_delay", {}).values()
            for direction in link.values()]


def _worst(directions: list[dict[str, Any]], key: str) -> float | None:
    values = [d[key] for d in directions if d.get(key) is not None]
    return max(values) if values else None


def _device(directions: list[dict[str, Any]]) -> dict[str, Any]:
    """The compiled line's device stamps over the run: worst p99 device lateness, early
    frames and the largest early margin (None where no line stamped a frame)."""
    stamped = [d for d in directions if d.get("device_stamped")]
    return {"delayline_device_lateness_p99_us": _worst(stamped, "device_lateness_p99_us"),
            "delayline_device_stamped": sum(d["device_stamped"] for d in stamped) if stamped
            else None,
            "delayline_early_frames": sum(d["early_frames"] for d in stamped) if stamped
            else None,
            "delayline_early_max_us": _worst(stamped, "early_max_us")}


def fidelity(summary: pd.DataFrame, run_dir: Path) -> dict[str, Any]:
    """The run's fidelity check (module docstring): figures, thresholds and the verdict."""
    plain = summary[summary["proto"] == CALIBRATION_ARM]
    excess = {f"{r.rtt_ms:g}": round(float(r.error_ms), 3) for r in plain.itertuples()
              if not pd.isna(r.error_ms)}
    applied = (summary["applied_rtt_ms"] - summary["rtt_ms"]).abs().dropna()
    applied_err = round(float(applied.max()), 4) if not applied.empty else None
    directions = _directions(run_dir)
    lateness = _worst(directions, "lateness_p99_us")
    reasons = []
    if not excess:
        reasons.append(f"no {CALIBRATION_ARM} calibration point in this run")
    for rtt, value in excess.items():
        if value > PLAIN_EXCESS_MAX_MS:
            reasons.append(f"plain TCP {value:+.2f} ms over theory at {rtt} ms RTT "
                           f"(threshold {PLAIN_EXCESS_MAX_MS} ms)")
    if applied_err is not None and applied_err > APPLIED_RTT_ERROR_MAX_MS:
        reasons.append(f"delay line applied the RTT {applied_err:.3f} ms off "
                       f"(threshold {APPLIED_RTT_ERROR_MAX_MS} ms)")
    if lateness is not None and lateness > LATENESS_P99_MAX_US:
        reasons.append(f"delay line p99 lateness {lateness:.0f} us "
                       f"(threshold {LATENESS_P99_MAX_US:.0f} us)")
    return {
        "noisy": bool(reasons), "reasons": reasons,
        "plain_excess_ms": excess, "applied_rtt_error_max_ms": applied_err,
        "delayline_lateness_p99_us": lateness, **_device(directions),
        "thresholds": {"plain_excess_max_ms": PLAIN_EXCESS_MAX_MS,
                       "applied_rtt_error_max_ms": APPLIED_RTT_ERROR_MAX_MS,
                       "lateness_p99_max_us": LATENESS_P99_MAX_US},
    }


def record_fidelity(run_dir: Path, check: dict[str, Any]) -> None:
    """Write the check into the run's metadata.json (kept when the runner finishes it)."""
    path = run_dir / "metadata.json"
    if not path.exists():
        return
    meta = json.loads(path.read_text())
    meta["fidelity"] = check
    path.write_text(json.dumps(meta, indent=2))


def verdict_line(check: dict[str, Any]) -> str:
    """One line for the report and logs: the verdict with its figures."""
    excess = ", ".join(f"{v:+.2f} ms at {k} ms" for k, v in check["plain_excess_ms"].items())
    figures = (f"plain TCP excess {excess or 'not measured'}; delay line RTT error "
               f"{check['applied_rtt_error_max_ms']} ms, p99 lateness "
               f"{check['delayline_lateness_p99_us']} us")
    if check.get("delayline_device_lateness_p99_us") is not None:
        figures += (f", at the device p99 {check['delayline_device_lateness_p99_us']} us, "
                    f"{check['delayline_early_frames']} of "
                    f"{check['delayline_device_stamped']} stamped frames early by <= "
                    f"{check['delayline_early_max_us']} us")
    if check["noisy"]:
        return f"**noisy run**: {'; '.join(check['reasons'])} ({figures})."
    return f"Fidelity check passed ({figures}; thresholds {check['thresholds']})."
