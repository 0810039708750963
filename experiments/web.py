"""web: a page of N objects fetched by curl from Python's http.server through each arm.

Each point: a fresh ``direct`` network with the path's RTT, the arm's proxies, ``python -m
http.server --protocol HTTP/1.1`` serving a fixed object set (``objects`` files of
``object_kib`` KiB, a byte pattern per file) and ``repeat`` page fetches by curl: over one
keep-alive connection (``connections`` = 1, the objects one after the other) or over up to
``connections`` parallel ones (``--parallel --parallel-max``). A fetch records the page time
(curl's process from start to exit, timed inside the client host), the first object's
``time_connect`` and ``time_starttransfer`` as curl saw them, the bytes and whether every
object arrived whole.

What the proxies add to a connection's set-up is ``proxy-plain`` against ``plain``: the
first object's time to first byte with both proxies relaying plain TCP, minus the same
without them (``web_summary.csv``: ``ttfb_added_ms``). The page time of the encrypting arms
adds their handshake round trips to that.
"""

from __future__ import annotations

import json
import sys
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
    proxy_outcomes,
    report_section,
    wait_listening,
)
from experiments.runner import RunContext  # noqa: E402
from topologies import PathShape  # noqa: E402

NAME = "web"
PORT = 8000
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"rtts": [20.0], "objects": 5, "object_kib": 16, "connections": [1],
              "repeat": 3},
    "full": {"rtts": [20.0, 100.0], "objects": 20, "object_kib": 32, "connections": [1, 6],
             "repeat": 20},
}

FETCH = r"""
import json, subprocess, sys, time
server, port, n, parallel = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
argv = ["curl", "-sS", "--fail", "-w", "%{time_connect} %{time_starttransfer} %{size_download}\n"]
if parallel > 1:
    argv += ["--parallel", "--parallel-immediate", "--parallel-max", str(parallel)]
for i in range(n):
    argv += [f"http://{server}:{port}/o{i}.bin", "-o", "/dev/null"]
t = time.perf_counter()
proc = subprocess.run(argv, capture_output=True, text=True)
page = time.perf_counter() - t
rows = [line.split() for line in proc.stdout.splitlines() if line.strip()]
print(json.dumps({"page_ms": page * 1e3, "returncode": proc.returncode,
                  "error": proc.stderr.strip()[-300:],
                  "first_connect_ms": float(rows[0][0]) * 1e3 if rows else None,
                  "first_ttfb_ms": float(rows[0][1]) * 1e3 if rows else None,
                  "sizes": [int(float(r[2])) for r in rows]}))
"""


def points(profile: str) -> list[dict[str, Any]]:
    grid = PROFILES[profile]
    return [{"proto": arm, "rtt_ms": rtt, "connections": c}
            for rtt in grid["rtts"] for c in grid["connections"] for arm in ARMS]


def objects(root: Path, count: int, kib: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (root / f"o{i}.bin").write_bytes(bytes((i + j) % 251 for j in range(kib * 1024)))


def run_point(point: dict[str, Any], ctx: RunContext) -> list[dict[str, Any]]:
    grid = PROFILES[ctx.profile]
    repeat = ctx.repeat or grid["repeat"]
    n, size = grid["objects"], grid["object_kib"] * 1024
    with arm_network(point["proto"], PathShape(rtt_ms=point["rtt_ms"]), ctx, (PORT,)) as (
            net, hosts):
        www = net.workdir / "www"
        objects(www, n, grid["object_kib"])
        server = net.start_helper("server", "http-server", [
            sys.executable, "-m", "http.server", str(PORT), "--protocol", "HTTP/1.1",
            "--bind", net.ip("server"), "--directory", str(www)], essential=False)
        fetches = []
        try:
            wait_listening(net, "server", PORT)
            for i in range(repeat):
                out = net.run("client", [sys.executable, "-c", FETCH, net.ip("server"),
                                         str(PORT), str(n), str(point["connections"])],
                              timeout=120)
                fetch = json.loads(out.strip().splitlines()[-1])
                fetch.update(rep=i, objects=n, object_bytes=size,
                             ok=fetch["returncode"] == 0 and fetch["sizes"] == [size] * n)
                fetches.append(fetch)
            conns = proxy_outcomes(hosts)
        finally:
            net.stop_helper(server)
    where = {**describe(net), "eno_datapath": datapath_of(hosts)}
    outcomes = sorted({str(c.get("outcome")) for c in conns})
    return [{**point, **f, "outcomes": outcomes, **where} for f in fetches]


def analyse(run_dir: Path) -> dict[str, Any]:
    frame = load_records(run_dir)
    keys = ["rtt_ms", "connections", "proto"]
    summary = frame.groupby(keys, sort=False).agg(
        fetches=("page_ms", "size"), ok=("ok", "sum"),
        page_median_ms=("page_ms", "median"),
        page_p90_ms=("page_ms", lambda s: s.quantile(0.9)),
        first_ttfb_median_ms=("first_ttfb_ms", "median"),
        first_connect_median_ms=("first_connect_ms", "median"),
        outcomes=("outcomes", outcomes_of),
    ).reset_index()
    summary["ttfb_added_ms"] = against_plain(summary, ["rtt_ms", "connections"],
                                             "first_ttfb_median_ms",
                                             lambda arm, plain: arm - plain)
    summary.to_csv(run_dir / "web_summary.csv", index=False, float_format="%.3f")
    plot(frame, run_dir / "web.png")
    added = summary[summary["proto"] == "proxy-plain"]["ttfb_added_ms"]
    return {"points": len(summary), "failed_fetches": int((~frame["ok"]).sum()),
            "proxy_ttfb_added_ms": float(added.median()) if len(added) else None}


def plot(frame: pd.DataFrame, path: Path) -> None:
    groups = frame[["rtt_ms", "connections"]].drop_duplicates().values.tolist()
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4.5), squeeze=False)
    for ax, (rtt, conns) in zip(axes[0], groups, strict=True):
        sub = frame[(frame["rtt_ms"] == rtt) & (frame["connections"] == conns)]
        arms = [a for a in ARMS if a in set(sub["proto"])]
        ax.boxplot([sub[sub["proto"] == a]["page_ms"] for a in arms])
        ax.set_xticks(range(1, len(arms) + 1), arms)
        ax.set_title(f"{rtt:g} ms RTT, {int(conns)} connection(s)")
        ax.set_ylabel("page fetch time (ms)")
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def section(run: Path, root: Path) -> list[str]:
    """REPORT.md: page-fetch times per arm and what the proxies add to a connection."""
    return report_section(
        "Web pages through the transparent proxies", run, root, "web",
        "curl fetching the objects from Python's http.server; `ttfb_added_ms`: the first "
        "object's time to first byte against `plain` through the same path",
        ["rtt_ms", "connections", "proto", "fetches", "ok", "page_median_ms",
         "first_ttfb_median_ms", "ttfb_added_ms", "outcomes"])
