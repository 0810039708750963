"""loss: handshake completion time under 0-10 % loss (where a lost SYN, Init or ClientHello
costs a retransmission timeout).

Each protocol runs ``repeat`` sequential connections on the ``direct`` topology at
20 ms RTT with i.i.d. loss on the link (both directions, seeded). The handshake
completion time is when the connection could carry protected data: the TEP
handshake end for ENO protocols, ``connect()`` for plain TCP (and, for TFO, the
first response byte, since connect() returns before any handshake). The analysis
draws one CDF panel per loss rate. ``fell_back`` counts connections of encrypting arms
that completed in plaintext: an opportunistic ENO client drops ENO from its third SYN
retransmission (RFC 8547 §4.6 exception), so enough lost SYNs or SYN-ACKs in a row
downgrade a connection, the price of surviving paths that drop SYNs with ENO.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from experiments.common import Measurement, NetworkPool, counts_for_arm, measure  # noqa: E402
from experiments.latency import protocols  # noqa: E402
from experiments.runner import RunContext  # noqa: E402
from experiments.style import style  # noqa: E402
from topologies import PathShape  # noqa: E402

NAME = "loss"
RTT_MS = 20.0
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"losses": [0.0, 2.0, 10.0], "repeat": 12},
    "full": {"losses": [0.0, 1.0, 2.0, 5.0, 10.0], "repeat": 50},
}
HANDSHAKE_PHASES = ("tep_handshake_done", "eno_result")  # first one present wins (stream.py)


QUICK_ARMS = ("plain", "tcpcrypt", "tls", "tls-noeno")  # one per design; full runs every arm


def points(profile: str) -> list[dict[str, Any]]:
    arms = [p for p in protocols("full") if profile == "full" or p in QUICK_ARMS]
    return [{"proto": p, "loss_percent": loss}
            for loss in PROFILES[profile]["losses"] for p in arms]


# Points on the same path share one network (experiments/common.py, NetworkPool); each
# arm still gets its own server, hooks, client and warm-up.
POOL = NetworkPool()


def close_run(ctx: RunContext) -> None:
    """End of the run (also an interrupted one): close the pooled network."""
    POOL.close(ctx)


def run_point(point: dict[str, Any], ctx: RunContext) -> list[dict[str, Any]]:
    repeat = ctx.repeat or PROFILES[ctx.profile]["repeat"]
    path = PathShape(rtt_ms=RTT_MS, loss=point["loss_percent"] / 100.0)
    m = Measurement(proto=point["proto"], path=path, connections=repeat, timeout_s=30.0,
                    gap_ms=2.0)
    return measure(m, ctx, f"{point['proto']}-loss{point['loss_percent']:g}", POOL)


def handshake_ms(record: dict[str, Any]) -> float | None:
    phases = record.get("phases_ms") or {}
    for name in HANDSHAKE_PHASES:
        if phases.get(name) is not None:
            return float(phases[name])
    if record["proto"].endswith("-tfo"):
        return record.get("ttfb_ms")
    return record.get("connect_ms")


def analyse(run_dir: Path) -> dict[str, Any]:
    records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    rows = [{"proto": r["proto"], "loss_percent": r["loss_percent"], "conn": r["conn"],
             "ok": bool(r["bytes_ok"]), "handshake_ms": handshake_ms(r), "ttfb_ms": r["ttfb_ms"],
             "fell_back": bool(r["bytes_ok"]) and r.get("outcome") == "plaintext"
             and not str(r["proto"]).startswith("plain"),
             "fallback_reason": r.get("fallback_reason")}
            for r in records if counts_for_arm(r)]
    frame = pd.DataFrame(rows)
    frame.to_csv(run_dir / "loss_connections.csv", index=False)
    summary = frame.groupby(["proto", "loss_percent"]).agg(
        n=("ok", "size"), completed=("ok", "sum"),
        handshake_median_ms=("handshake_ms", "median"),
        handshake_p95_ms=("handshake_ms", lambda s: s.quantile(0.95)),
        over_1s=("handshake_ms", lambda s: int((s > 1000).sum())),
        fell_back=("fell_back", "sum"),
    ).reset_index()
    summary.to_csv(run_dir / "loss_summary.csv", index=False, float_format="%.3f")
    plot_cdfs(frame, run_dir / "loss_cdf.png")
    return {"points": len(summary), "incomplete": int((summary["n"] - summary["completed"]).sum()),
            "fell_back": int(summary["fell_back"].sum())}


def plot_cdfs(frame: pd.DataFrame, path: Path) -> None:
    losses = sorted(frame["loss_percent"].unique())
    fig, axes = plt.subplots(1, len(losses), figsize=(4 * len(losses), 3.8), sharey=True,
                             sharex=True)
    # One log axis from half an RTT to past the slowest handshake, so RTO steps line up.
    xmax = max(float(frame["handshake_ms"].max() or 0) * 1.3, 30 * RTT_MS)
    for ax, loss in zip(np.atleast_1d(axes), losses, strict=True):
        for proto, group in frame[frame["loss_percent"] == loss].groupby("proto"):
            values = np.sort(group["handshake_ms"].dropna().to_numpy())
            if not len(values):
                continue
            st = style(str(proto))
            ax.step(values, np.arange(1, len(values) + 1) / len(group), where="post",
                    color=st.color, label=st.label)
        ax.set_xscale("log")
        ax.set_xlim(RTT_MS / 2, xmax)
        ax.set_title(f"{loss:g} % loss, {RTT_MS:g} ms RTT")
        ax.set_xlabel("handshake completion (ms)")
        ax.grid(True, alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("fraction of connections")
    np.atleast_1d(axes)[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
