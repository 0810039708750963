"""Plots: each takes a DataFrame and writes a figure (Agg backend, closed after saving)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from experiments.style import style  # noqa: E402


def latency_plot(summary: pd.DataFrame, path: Path) -> None:
    """TTFB vs RTT: median line, p5-p95 band, and the theory line per protocol."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for proto, group in summary.groupby("proto"):
        st = style(str(proto))
        group = group.sort_values("rtt_ms")
        ax.plot(group["rtt_ms"], group["ttfb_median_ms"], marker=st.marker, color=st.color,
                label=f"{st.label} (median)")
        ax.fill_between(group["rtt_ms"], group["ttfb_p5_ms"], group["ttfb_p95_ms"],
                        color=st.color, alpha=0.2, linewidth=0)
        if group["theory_ms"].notna().all():
            ax.plot(group["rtt_ms"], group["theory_ms"], linestyle="--", color=st.color,
                    linewidth=1, label=f"{st.label} (theory)")
    ax.set_xlabel("configured RTT (ms)")
    ax.set_ylabel("time to first response byte (ms)")
    ax.set_title("Time to first byte vs RTT (band: p5-p95)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
