"""datapath: the same ENO arms through the NFQUEUE hook and through the in-kernel option.

The working group argued packet intercept against socket intercept ("tcpcrypt is great
if it's inside the kernel"). Each point is one ENO arm on one ENO datapath at one RTT on
the ``direct`` topology, measured like a latency point (experiments/common.py: one network
per RTT shared by its points, a warm-up, ``repeat`` captured connections, the time split of
testbed/net/timesplit.py). The analysis gives, per arm, datapath and RTT, the median TTFB
against theory, the wait between the TCP handshake and the ENO verdict (``eno_query_ms``:
a control round trip to the hook, or reading the socket's storage on bpf), the host time
the split attributes to each end, and the connections with a SACK block above the
cumulative ACK (reordering, experiments/common.py). The latency experiment keeps one
datapath per run (``--eno-datapath``); this one sets both side by side. Points on bpf
exist only where the kernel takes the program.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from experiments import timing  # noqa: E402
from experiments.common import (  # noqa: E402
    NetworkPool,
    counts_for_arm,
    find_connection,
    measure,
    reordered,
    rtt_grid,
    rtt_measurement,
)
from experiments.runner import RunContext  # noqa: E402
from experiments.theory import ttfb_ms  # noqa: E402
from testbed.eno.bpf.attach import support_problem  # noqa: E402
from testbed.net.flows import connections  # noqa: E402
from testbed.net.pcap import read_segments  # noqa: E402

NAME = "datapath"
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"arms": ["tcpcrypt", "tls"], "rtts": [10, 100], "repeat": 8},
    "full": {"arms": ["tcpcrypt", "tls", "eno-test"], "rtts": [1, 10, 50, 100, 200],
             "repeat": 30},
}


def datapaths() -> list[str]:
    return ["nfqueue"] if support_problem() is not None else ["nfqueue", "bpf"]


def points(profile: str) -> list[dict[str, Any]]:
    grid = PROFILES[profile]
    return rtt_grid(grid["rtts"], grid["arms"], datapath=datapaths())


# The points of one RTT share one network, as in the latency experiment (rtt_grid lists them
# one after another); each still gets its own hooks or bpf attachment, server and client.
POOL = NetworkPool()


def close_run(ctx: RunContext) -> None:
    """End of the run (also an interrupted one): close the pooled network."""
    POOL.close(ctx)


def run_point(point: dict[str, Any], ctx: RunContext) -> list[dict[str, Any]]:
    repeat = ctx.repeat or PROFILES[ctx.profile]["repeat"]
    m = rtt_measurement(point, repeat, eno_datapath=point["datapath"])
    return measure(m, ctx, f"{point['proto']}-{point['datapath']}-{point['rtt_ms']}ms", POOL)


def reordering(records: pd.DataFrame, run_dir: Path) -> list[int | None]:
    """Per record: segments with a SACK hole before the first FIN (None: not captured)."""
    loaded: dict[str, Any] = {}
    out: list[int | None] = []
    for record in records.to_dict("records"):
        name = Path(str(record.get("pcap"))).name if record.get("pcap") else None
        if name is None or not record.get("bytes_ok"):
            out.append(None)
            continue
        if name not in loaded:
            loaded[name] = connections(read_segments(run_dir / "pcaps" / name))
        conn = find_connection(loaded[name], record)
        out.append(None if conn is None else reordered(conn))
    return out


def summarise(records: pd.DataFrame) -> pd.DataFrame:
    measured = records[records.apply(lambda r: counts_for_arm(r.to_dict()), axis=1)]
    rows = []
    for (proto, datapath, rtt), group in measured.groupby(["proto", "datapath", "rtt_ms"]):
        ok = group[group["bytes_ok"].astype(bool)]
        phases = ok["phases_ms"].apply(lambda p: p if isinstance(p, dict) else {})
        query = (phases.apply(lambda p: p.get("eno_result")).astype(float)
                 - phases.apply(lambda p: p.get("tcp_connected")).astype(float))
        theory = ttfb_ms(str(proto), float(rtt))
        split = timing.split_table(ok) if "split_error" in ok else pd.DataFrame()
        rows.append({
            "proto": proto, "datapath": datapath, "rtt_ms": rtt, "n": len(ok),
            "failed": len(group) - len(ok), "ttfb_median_ms": ok["ttfb_ms"].median(),
            "theory_ms": theory, "excess_ms": None if theory is None
            else ok["ttfb_ms"].median() - theory,
            "connect_median_ms": ok["connect_ms"].median(),
            "eno_query_median_ms": query.median(),
            "client_host_ms": split["client_host_ms"].iloc[0] if len(split) else None,
            "server_host_ms": split["server_host_ms"].iloc[0] if len(split) else None,
            "reordered_connections": int((ok["reordered"].fillna(0) > 0).sum()),
        })
    return pd.DataFrame(rows).sort_values(["proto", "rtt_ms", "datapath"])


def analyse(run_dir: Path) -> dict[str, Any]:
    records = pd.read_json(run_dir / "records.jsonl", lines=True)
    records["reordered"] = reordering(records, run_dir)
    table = summarise(records)
    table.to_csv(run_dir / "datapath.csv", index=False, float_format="%.3f")
    plot(table, run_dir / "datapath.png")
    return {"points": len(table), "failed": int(table["failed"].sum()),
            "reordered_connections": int(table["reordered_connections"].sum())}


def plot(table: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels = [f"{r.proto}\n{r.rtt_ms:g} ms" for r in table.drop_duplicates(
        ["proto", "rtt_ms"]).itertuples()]
    keys = list(table.drop_duplicates(["proto", "rtt_ms"])[["proto", "rtt_ms"]].itertuples(
        index=False, name=None))
    names = sorted(table["datapath"].unique())
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        sub = table[table["datapath"] == name].set_index(["proto", "rtt_ms"])
        values = [sub["excess_ms"].get(key, float("nan")) for key in keys]
        ax.bar([k + i * width for k in range(len(keys))], values, width, label=name)
    ax.set_xticks([k + width * (len(names) - 1) / 2 for k in range(len(keys))])
    ax.set_xticklabels(labels)
    ax.set_ylabel("median TTFB minus theory (ms)")
    ax.legend(title="ENO datapath")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
