"""`tcpinc ladder PCAP [--conn N] --out FILE.png|.svg`: a message sequence chart of one
connection (matplotlib, Agg), from the arrows testbed/ladder.py derives.

Client on the left, server on the right, time since the first SYN downwards and to scale;
pure ACKs are thin and grey. When PCAP has a server-side twin (NAME-server.pcap, written by
the workload next to every capture) the far end of each arrow is where that capture saw
the segment; otherwise it is half the SYN/SYN-ACK round trip away (stated in the title).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from testbed.errors import ConfigError  # noqa: E402
from testbed.ladder import (  # noqa: E402
    TEP_SHORT,
    Arrow,
    SegmentKey,
    arrows,
    negotiated_tep,
    segment_key,
)
from testbed.net.flows import Connection, ConnKey, connections  # noqa: E402
from testbed.net.pcap import PcapError, read_segments  # noqa: E402

FORMATS = (".png", ".svg")


def load(pcap: Path, conn_index: int) -> tuple[Connection, dict[SegmentKey, list[float]] | None]:
    """Connection ``conn_index`` (0-based, in order of first appearance) of ``pcap``, and the
    server-side times of its segments when a twin capture exists."""
    try:
        conns = list(connections(read_segments(pcap)).values())
    except (OSError, PcapError) as exc:
        raise ConfigError(f"cannot read {pcap}: {exc}", "give a pcap file (tcpdump -w)") from exc
    if not 0 <= conn_index < len(conns):
        raise ConfigError(f"--conn {conn_index}: {pcap} has {len(conns)} TCP connection(s)",
                          f"use --conn 0..{len(conns) - 1}" if conns else "pick another pcap")
    conn = conns[conn_index]
    twin = pcap.with_name(f"{pcap.stem}-server{pcap.suffix}")
    return conn, _server_times(twin, conn.key, conn.t0_ns) if twin.exists() else None


def _server_times(twin: Path, key: ConnKey, t0_ns: int) -> dict[SegmentKey, list[float]] | None:
    try:
        segments = read_segments(twin)
    except (OSError, PcapError):
        return None  # the far ends fall back to the round-trip estimate
    out: dict[SegmentKey, list[float]] = {}
    for s in segments:
        if {(s.src, s.sport), (s.dst, s.dport)} != {(key.client, key.client_port),
                                                  (key.server, key.server_port)}:
            continue
        direction = "c2s" if (s.src, s.sport) == (key.client, key.client_port) else "s2c"
        out.setdefault(segment_key(direction, s), []).append((s.ts_ns - t0_ns) / 1e9)
    return out


def _draw_arrow(ax: Any, arrow: Arrow, slot: int) -> None:
    x0, x1 = (0.0, 1.0) if arrow.direction == "c2s" else (1.0, 0.0)
    y0, y1 = arrow.t_send * 1e3, arrow.t_recv * 1e3
    colour = "0.6" if arrow.pure_ack else ("tab:blue" if arrow.direction == "c2s"
                                           else "tab:red")
    ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                arrowprops={"arrowstyle": "-|>", "color": colour,
                            "lw": 0.6 if arrow.pure_ack else 1.2})
    frac = (0.5, 0.25, 0.75)[slot % 3]  # stagger labels of arrows close in time
    x, y = x0 + (x1 - x0) * frac, y0 + (y1 - y0) * frac
    ax.text(x, y, arrow.label, fontsize=6.5 if not arrow.pure_ack else 5.5,
            color="0.35" if arrow.pure_ack else "black", ha="center", va="bottom",
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})


def draw(conn: Connection, items: list[Arrow], out: Path, exact: bool, title: str = "") -> None:
    span = max((max(a.t_send, a.t_recv) for a in items), default=0.0) * 1e3
    fig, ax = plt.subplots(figsize=(8.0, 3.0 + 0.45 * len(items)))
    try:
        for x, name in ((0.0, f"client\n{conn.key.client}:{conn.key.client_port}"),
                        (1.0, f"server\n{conn.key.server}:{conn.key.server_port}")):
            ax.axvline(x, color="black", lw=1.5)
            ax.text(x, -0.04 * max(span, 1.0), name, ha="center", va="bottom", fontsize=8)
        last_y, slot = None, 0
        for arrow in items:
            y = min(arrow.t_send, arrow.t_recv) * 1e3
            slot = slot + 1 if last_y is not None and y - last_y < 0.04 * max(span, 1) else 0
            _draw_arrow(ax, arrow, slot)
            last_y = y
        ax.set_xlim(-0.25, 1.25)
        ax.set_ylim(span * 1.03 + 0.1, -0.08 * max(span, 1.0))
        ax.set_xticks([])
        ax.set_ylabel("ms since the first SYN")
        tep = negotiated_tep(conn)
        ends = ("far ends from the server-side capture" if exact
                else "far ends at half the SYN/SYN-ACK round trip")
        head = title or str(conn.key)
        tep_name = TEP_SHORT.get(tep, hex(tep)) if tep is not None else "none"
        ax.set_title(f"{head}\nnegotiated TEP: {tep_name}; {ends}", fontsize=9)
        fig.tight_layout()
        fig.savefig(out, dpi=110)
    finally:
        plt.close(fig)


def render(pcap: Path, out: Path, conn_index: int = 0, title: str = "") -> dict[str, Any]:
    """Check the arguments, then draw; nothing is written when an argument is wrong."""
    if out.suffix.lower() not in FORMATS:
        raise ConfigError(f"--out {out}: unknown image format {out.suffix or '(none)'}",
                          "name the file .png or .svg")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: directory {out.parent} does not exist",
                          "create it first")
    conn, server_times = load(pcap, conn_index)
    items = arrows(conn, server_times)
    draw(conn, items, out, server_times is not None, title)
    return {"ladder": str(out), "connection": str(conn.key), "segments": len(items),
            "server_capture": server_times is not None}
