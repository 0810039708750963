"""roundtrips: handshake round trips before the first application byte, from the pcaps.

Each protocol runs ``repeat`` connections at one RTT (50 ms) on the ``direct``
topology. The analysis counts, in each connection's capture, the server flights
the client waited for before its first application byte (``rt_send``) and up to
the first response byte (``rt_resp``), and sets them beside the theory table of
docs/protocols.md §5 (experiments/theory.py). Any disagreement is flagged (``agrees``
false) and shows in the report. ENO arms run on both ENO datapaths (the NFQUEUE hook and, where the
kernel takes it, the bpf program; arms with SYN data only on the hook), and every
connection is checked for reordering on the loss-free link: a SACK block above the
cumulative ACK before the first FIN (``reordered``), and any duplicate ACK or SACK block
that is not a D-SACK report of a needless retransmission (``dup_ack_connections``;
experiments/common.py, ``overtaking_acks``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.common import Measurement, NetworkPool, count_from_pcaps, measure
from experiments.latency import protocols
from experiments.runner import RunContext
from experiments.theory import THEORY_RTTS
from testbed.apps.transport import get_transport
from testbed.eno.bpf.attach import support_problem
from testbed.workload import needs_hook
from topologies import PathShape

NAME = "roundtrips"
RTT_MS = 50.0
PROFILES = {"quick": {"repeat": 5}, "full": {"repeat": 20}}


def points(profile: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for proto in protocols("full"):
        paths = datapaths(proto)
        out += [{"proto": proto, "datapath": d} for d in paths] if paths else [{"proto": proto}]
    return out


def datapaths(proto: str) -> list[str]:
    """The ENO datapaths an arm runs on here ([] for arms without ENO)."""
    if not get_transport(proto).uses_eno:
        return []
    if needs_hook(proto) or support_problem() is not None:
        return ["nfqueue"]
    return ["nfqueue", "bpf"]


# Points on the same path share one network (experiments/common.py, NetworkPool); each
# arm still gets its own server, hooks, client and warm-up.
POOL = NetworkPool()
# Round trips are counted from sequence and ACK numbers, never from time, and most of a
# point's wall time is waiting on 50 ms round trips: two halves of the grid run side by side,
# each on its own network (experiments/runner.py experiment_executor).
CONCURRENCY = 2
CONCURRENCY_REASON = "round trips counted from captures, not times"


def close_run(ctx: RunContext) -> None:
    """End of the run (also an interrupted one): close the pooled network."""
    POOL.close(ctx)


def run_point(point: dict[str, Any], ctx: RunContext) -> list[dict[str, Any]]:
    repeat = ctx.repeat or PROFILES[ctx.profile]["repeat"]
    datapath = point.get("datapath")
    m = Measurement(proto=point["proto"], path=PathShape(rtt_ms=RTT_MS), connections=repeat,
                    eno_datapath=datapath)
    tag = f"{point['proto']}-{datapath}" if datapath else point["proto"]
    return measure(m, ctx, tag, POOL)


def analyse(run_dir: Path) -> dict[str, Any]:
    records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    counted = pd.DataFrame(count_from_pcaps(records, run_dir))
    counted.to_csv(run_dir / "roundtrips_per_connection.csv", index=False)
    counted["eno_datapath"] = counted["eno_datapath"].fillna("-")
    rows = []
    for (proto, datapath), group in counted.groupby(["proto", "eno_datapath"]):
        send, resp = THEORY_RTTS[str(proto)]
        measured_send = group["rt_send"].mode().iloc[0] if group["rt_send"].notna().any() else None
        measured_resp = group["rt_resp"].mode().iloc[0] if group["rt_resp"].notna().any() else None
        overtaking = group["dup_acks"].fillna(0) - group["dsacks"].fillna(0)
        rows.append({
            "proto": proto, "datapath": datapath, "connections": len(group),
            "rt_send_measured": measured_send, "rt_send_theory": send,
            "rt_resp_measured": measured_resp, "rt_resp_theory": resp,
            "consistent": int(group["rt_send"].nunique() == 1 and group["rt_resp"].nunique() == 1),
            "flights": group["flights"].mode().iloc[0],
            # Theory counts server-first slots in half RTTs (1.5); flights count whole waits.
            "agrees": measured_send == int(send) and measured_resp == int(resp),
            "reordered_connections": int((group["reordered"].fillna(0) > 0).sum()),
            # In the client's capture: a duplicate ACK or SACK block that is not a
            # D-SACK (a segment overtook another), and D-SACKs (needless retransmissions).
            "dup_ack_connections": int((overtaking > 0).sum()),
            "dsack_connections": int((group["dsacks"].fillna(0) > 0).sum()),
        })
    table = pd.DataFrame(rows)
    table.to_csv(run_dir / "roundtrips.csv", index=False)
    return {"protocols": len(table), "disagreements": int((~table["agrees"]).sum()),
            "reordered_connections": int(table["reordered_connections"].sum()),
            "dup_ack_connections": int(table["dup_ack_connections"].sum())}
