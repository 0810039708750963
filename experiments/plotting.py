"""Plots: each takes a DataFrame and writes a figure (Agg backend, closed after saving)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from experiments.style import style  # noqa: E402


def latency_plot(summary: pd.DataFrame, path: Path) -> None:
    """TTFB vs RTT: median line, p5-p95 band, the theory line and, where the run has the time
    split, the median protocol latency (TTFB minus host time); below, each minus theory."""
    split = "protocol_latency_ms" in summary
    fig, (ax, err) = plt.subplots(2, 1, figsize=(10.5, 7), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1.4]})
    for proto, group in summary.groupby("proto"):
        st = style(str(proto))
        group = group.sort_values("rtt_ms")
        ax.plot(group["rtt_ms"], group["ttfb_median_ms"], marker=st.marker, color=st.color,
                label=st.label)
        ax.fill_between(group["rtt_ms"], group["ttfb_p5_ms"], group["ttfb_p95_ms"],
                        color=st.color, alpha=0.2, linewidth=0)
        if group["theory_ms"].notna().all():
            ax.plot(group["rtt_ms"], group["theory_ms"], linestyle="--", color=st.color,
                    linewidth=1)
            err.plot(group["rtt_ms"], group["error_ms"], marker=st.marker, color=st.color)
        if split and group["protocol_latency_ms"].notna().any():
            ax.plot(group["rtt_ms"], group["protocol_latency_ms"], linestyle=":",
                    marker=st.marker, markerfacecolor="none", color=st.color, linewidth=1)
            err.plot(group["rtt_ms"], group["protocol_error_ms"], linestyle=":",
                     marker=st.marker, markerfacecolor="none", color=st.color)
    rtts = sorted(summary["rtt_ms"].unique())
    bound = [1.0 + 0.02 * 2 * r for r in rtts]  # 1 ms + 2 % of a 2-RTT theory value
    err.fill_between(rtts, [-b for b in bound], bound, color="#cccccc", alpha=0.4, linewidth=0,
                     label="1 ms + 2 % of a 2-RTT theory value")
    err.axhline(0, color="black", linewidth=0.6)
    err.set_xlabel("configured RTT (ms)")
    err.set_ylabel("median - theory (ms)")
    err.grid(True, alpha=0.3)
    err.legend(fontsize=7, loc="upper left")
    ax.set_ylabel("time to first response byte (ms)")
    ax.set_title("Time to first byte vs RTT: median TTFB (solid), p5-p95 (band), protocol "
                 "latency = TTFB - host time (dotted), theory (dashed)", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
