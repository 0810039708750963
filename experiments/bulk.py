"""bulk: Debian's iperf3 through each arm (experiments/appnet.py) over an emulated path.

Each point: a fresh ``direct`` network with the path's RTT and bottleneck rate, the arm's
proxies, ``iperf3 -s`` on the server and ``iperf3 -c -t T -J`` on the client. Records give
goodput (what the receiving iperf3 counted, bits/s), the sender's retransmissions and the
CPU time of each side's processes: iperf3's own (its ``cpu_utilization_percent`` over the
test) plus the proxy's (/proc/PID/stat before and after; the ENO hook, which only sees
handshake-phase segments, and kernel softirq time are not counted). iperf3's receiver stops
counting at the control connection's TEST_END, which can overtake data still buffered in
the proxies, so a proxied arm's goodput is, if anything, understated.

The analysis gives per arm and path the median goodput, its ratio to ``plain`` through the
same path, and CPU nanoseconds per received byte on each side (``bulk_summary.csv``,
``bulk.png``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from experiments.appnet import (  # noqa: E402
    ARMS,
    against_plain,
    arm_network,
    datapath_of,
    describe,
    load_records,
    outcomes_of,
    proxy_cpu,
    proxy_outcomes,
    report_section,
    wait_listening,
)
from experiments.runner import RunContext  # noqa: E402
from topologies import PathShape  # noqa: E402

NAME = "bulk"
PORT = 5201
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"paths": [(20.0, 1000)], "seconds": 2, "repeat": 1},
    "full": {"paths": [(20.0, 1000), (20.0, 100), (100.0, 1000)], "seconds": 10, "repeat": 3},
}


def points(profile: str) -> list[dict[str, Any]]:
    grid = PROFILES[profile]
    return [{"proto": arm, "rtt_ms": rtt, "rate_mbit": rate, "rep": rep}
            for rtt, rate in grid["paths"] for rep in range(grid["repeat"]) for arm in ARMS]


def run_point(point: dict[str, Any], ctx: RunContext) -> list[dict[str, Any]]:
    seconds = PROFILES[ctx.profile]["seconds"]
    path = PathShape(rtt_ms=point["rtt_ms"], rate_bps=int(point["rate_mbit"] * 1_000_000))
    with arm_network(point["proto"], path, ctx, (PORT,)) as (net, hosts):
        server = net.start_helper("server", "iperf3-server", ["iperf3", "-s", "-p", str(PORT)],
                                  essential=False)
        try:
            wait_listening(net, "server", PORT)
            before = proxy_cpu(hosts)
            out = net.run("client", ["iperf3", "-c", net.ip("server"), "-p", str(PORT),
                                     "-t", str(seconds), "-J"], timeout=seconds + 60)
            after = proxy_cpu(hosts)
            conns = proxy_outcomes(hosts)
            if "server" in hosts:
                hosts["server"].wait_idle()
                reads = read_sizes(conns, hosts["server"].records())
            else:
                reads = {}
        finally:
            net.stop_helper(server)
    report = json.loads(out)
    return [{**point, **summarise(report, before, after, conns), **reads, **describe(net),
             "eno_datapath": datapath_of(hosts)}]


def read_sizes(client: list[dict[str, Any]], server: list[dict[str, Any]]
               ) -> dict[str, float | None]:
    """KiB per read of the data connection (the one that carried the most) where each proxy
    takes the bytes in: the client proxy from iperf3, the server proxy from the network.
    Every read is one turn of the proxy's loop: what its per-call costs are spread over."""
    def per_read(records: list[dict[str, Any]], side: str) -> float | None:
        data = max(records, key=lambda r: r.get(f"{side}_bytes_in") or 0, default=None)
        if not data or not data.get(f"{side}_reads"):
            return None
        return float(data[f"{side}_bytes_in"]) / data[f"{side}_reads"] / 1024

    return {"sender_proxy_kib_per_read": per_read(client, "app"),
            "receiver_proxy_kib_per_read": per_read(server, "net")}


def summarise(report: dict[str, Any], before: dict[str, float], after: dict[str, float],
              conns: list[dict[str, Any]]) -> dict[str, Any]:
    end = report["end"]
    received, sent = end["sum_received"], end["sum_sent"]
    cpu = end["cpu_utilization_percent"]
    seconds = float(received["seconds"])
    proxy = {node: after[node] - before[node] for node in after}
    app_sender = cpu["host_total"] / 100 * seconds
    app_receiver = cpu["remote_total"] / 100 * seconds
    nbytes = int(received["bytes"])
    sender = app_sender + proxy.get("client", 0.0)
    receiver = app_receiver + proxy.get("server", 0.0)
    return {
        "seconds": seconds, "goodput_mbit": received["bits_per_second"] / 1e6,
        "sent_mbit": sent["bits_per_second"] / 1e6, "bytes": nbytes,
        "retransmits": sent.get("retransmits"),
        "sender_app_cpu_s": app_sender, "receiver_app_cpu_s": app_receiver,
        "sender_proxy_cpu_s": proxy.get("client"), "receiver_proxy_cpu_s": proxy.get("server"),
        "sender_cpu_ns_per_byte": sender / nbytes * 1e9 if nbytes else None,
        "receiver_cpu_ns_per_byte": receiver / nbytes * 1e9 if nbytes else None,
        "outcomes": sorted({str(c.get("outcome")) for c in conns}),
        "teps": sorted({str(c.get("tep")) for c in conns if c.get("tep")}),
    }


def analyse(run_dir: Path) -> dict[str, Any]:
    frame = load_records(run_dir)
    keys = ["rtt_ms", "rate_mbit", "proto"]
    summary = frame.groupby(keys, sort=False).agg(
        runs=("goodput_mbit", "size"), goodput_mbit=("goodput_mbit", "median"),
        retransmits=("retransmits", "median"),
        sender_cpu_ns_per_byte=("sender_cpu_ns_per_byte", "median"),
        receiver_cpu_ns_per_byte=("receiver_cpu_ns_per_byte", "median"),
        **_read_columns(frame),
        outcomes=("outcomes", outcomes_of),
    ).reset_index()
    summary["ratio_vs_plain"] = against_plain(summary, ["rtt_ms", "rate_mbit"],
                                              "goodput_mbit", lambda arm, plain: arm / plain)
    summary.to_csv(run_dir / "bulk_summary.csv", index=False, float_format="%.3f")
    plot(summary, run_dir / "bulk.png")
    ratios = summary[summary["proto"].isin(["tcpcrypt", "tls"])]["ratio_vs_plain"]
    return {"points": len(summary),
            "min_encrypted_ratio": float(ratios.min()) if len(ratios) else None}


def _read_columns(frame: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Median KiB per proxy read, where the records have it (runs before it was recorded
    do not)."""
    return {c: (c, "median") for c in ("sender_proxy_kib_per_read",
                                       "receiver_proxy_kib_per_read") if c in frame}


def plot(summary: pd.DataFrame, path: Path) -> None:
    paths = summary[["rtt_ms", "rate_mbit"]].drop_duplicates().values.tolist()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(len(paths), 1)
    arms = list(ARMS)
    for i, (rtt, rate) in enumerate(paths):
        sub = summary[(summary["rtt_ms"] == rtt) & (summary["rate_mbit"] == rate)]
        sub = sub.set_index("proto").reindex(arms)
        xs = [a + i * width for a in range(len(arms))]
        label = f"{rtt:g} ms, {rate:g} Mbit/s"
        axes[0].bar(xs, sub["goodput_mbit"], width, label=label)
        axes[1].bar(xs, sub["sender_cpu_ns_per_byte"], width, label=f"sender, {label}")
        axes[1].bar(xs, sub["receiver_cpu_ns_per_byte"], width, bottom=sub[
            "sender_cpu_ns_per_byte"], alpha=0.5, label=f"receiver, {label}")
    for ax, ylabel in zip(axes, ("iperf3 goodput (Mbit/s)", "CPU per received byte (ns)"),
                          strict=True):
        ax.set_xticks([a + width * (len(paths) - 1) / 2 for a in range(len(arms))], arms)
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def section(run: Path, root: Path) -> list[str]:
    """REPORT.md: goodput per arm, its ratio to plain TCP and the CPU per byte."""
    return report_section(
        "Bulk transfer through the transparent proxies", run, root, "bulk",
        "iperf3 through each arm; CPU = iperf3 plus the proxy on each side, per byte the "
        "receiver counted; target: encrypting arms at least 0.8 x plain through the same path",
        ["rtt_ms", "rate_mbit", "proto", "goodput_mbit", "ratio_vs_plain",
         "sender_cpu_ns_per_byte", "receiver_cpu_ns_per_byte", "outcomes"])
