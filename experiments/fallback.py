"""fallback: every protocol x every middlebox model -> what the application got.

Each point runs ``repeat`` connections through one middlebox model on the
``middlebox`` topology (server on port 443, where TLS-aware boxes look), with
the ENO protocols under both the ``opportunistic`` and the ``required`` policy.
Each connection is classified:

- ``encrypted``: a TEP protected the data end to end (equal session IDs);
- ``encrypted-mitm``: both ends completed a TEP handshake but their session IDs
  differ (someone terminated it in the middle; only comparing IDs shows it);
- ``plaintext``: data flowed in clear (plain protocols, or an ENO fallback);
- ``failed:<why>``: reset, timeout, integrity, refused (required policy), other.

Beside the class: time to outcome, whether the bytes were intact, and whether the
application was told (a fallback reason or an error it can act on). The
analysis writes the matrix as a CSV and a heatmap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

import middleboxes  # noqa: E402
from experiments.common import Measurement, NetworkPool, measure  # noqa: E402
from experiments.runner import RunContext  # noqa: E402
from experiments.theory import THEORY_RTTS  # noqa: E402
from testbed.apps.transport import TRANSPORTS  # noqa: E402
from testbed.workload import needs_hook  # noqa: E402
from topologies import PathShape  # noqa: E402

NAME = "fallback"
PORT = 443
RTT_MS = 10.0
PROFILES = {"quick": {"repeat": 2}, "full": {"repeat": 5}}
CLASSES = ["encrypted", "encrypted-mitm", "plaintext", "plaintext-corrupted", "failed:refused",
           "failed:integrity", "failed:reset", "failed:timeout", "failed:other"]


# The quick profile (and the CI regression matrix) covers one arm per design; full covers all.
QUICK_ARMS = ("plain", "tls-noeno", "tcpcrypt", "tls")


def arms(profile: str = "full") -> list[tuple[str, str | None]]:
    """(protocol, policy): ENO protocols twice, the others once; test-only TEPs left out."""
    out: list[tuple[str, str | None]] = []
    for name, transport in TRANSPORTS.items():
        # Arms with a theory row (the single-curve tcpcrypt arms and the test-only TEP are
        # variants the matrix does not need).
        if name not in THEORY_RTTS or (profile == "quick" and name not in QUICK_ARMS):
            continue
        if getattr(transport, "uses_eno", False):
            out += [(name, "opportunistic"), (name, "required")]
        else:
            out.append((name, None))
    return out


SHORT = {"encrypted": "enc", "encrypted-mitm": "enc MITM", "plaintext": "plain",
         "plaintext-corrupted": "CORRUPT", "failed:refused": "x refused",
         "failed:integrity": "x integrity", "failed:reset": "x reset",
         "failed:timeout": "x timeout", "failed:other": "x other"}
# Parameters that make a model act on every flow of the matrix (the defaults are gentler).
BOX_SPECS = {"tamper": "tamper:rate=0.5"}


# The SYN-data variants (testbed/apps/proto_syn.py) in the quick profile: against the boxes the
# first packet meets and those that strip ENO around it. They run on the nfqueue datapath
# whatever the run's (the bpf program does not judge SYN data), so their cells hold for both.
QUICK_SYN_ARMS = ("tcpcrypt-syn", "tls-syn")
SYN_BOXES = ("passthrough", "drop-syn-data", "strip-syn-data", "replay-syn", "strip-eno-synack",
             "strip-eno-ack")


def points(profile: str) -> list[dict[str, Any]]:
    out = []
    for box in model_names():
        pairs = arms(profile)
        if profile == "quick" and box in SYN_BOXES:
            pairs += [(p, policy) for p in QUICK_SYN_ARMS for policy in POLICIES]
        out += [{"proto": proto, "policy": policy, "middlebox": BOX_SPECS.get(box, box)}
                for proto, policy in pairs]
    return out


POLICIES = ("opportunistic", "required")


def model_names() -> list[str]:
    """Every model once (aliases such as strip-eno are left out)."""
    return [entry["name"] for entry in middleboxes.catalogue()]


# One network per middlebox model: points() lists a model's arms one after the other, and
# each arm still gets its own box installation, server, hooks and client on it. Building
# the network (hosts, veths, delay lines) cost more than running an arm's connections.
POOL = NetworkPool()
# The matrix records outcomes, not times, and its SYN-black-hole cells spend their wall time
# waiting out retransmission timeouts: middlebox models run side by side, each model's arms
# one after another on its own network (experiments/runner.py experiment_executor).
CONCURRENCY = 4
GROUPED_BY = "middlebox"
CONCURRENCY_REASON = ("outcomes, not times; black-hole cells wait out SYN retransmission "
                      "timeouts")


def group_key(point: dict[str, Any]) -> str:
    return str(point["middlebox"])


def run_point(point: dict[str, Any], ctx: RunContext) -> list[dict[str, Any]]:
    repeat = ctx.repeat or PROFILES[ctx.profile]["repeat"]
    datapath = "nfqueue" if needs_hook(point["proto"]) else None
    m = Measurement(proto=point["proto"], policy=point["policy"], path=PathShape(rtt_ms=RTT_MS),
                    connections=repeat, topology="middlebox", middlebox=point["middlebox"],
                    port=PORT, warmup=False, timeout_s=client_timeout_s(), gap_ms=2.0,
                    eno_datapath=datapath)
    tag = f"{point['proto']}-{point['policy'] or 'none'}-{point['middlebox']}"
    return measure(m, ctx, tag, POOL)


LINEAR_TIMEOUTS = Path("/proc/sys/net/ipv4/tcp_syn_linear_timeouts")


def client_timeout_s() -> float:
    """How long a client waits for its connection (recorded as ``timeout_s``).

    It only decides when a connection that never completes is called failed (a SYN black
    hole under the ``required`` policy). It must outlast the slowest connection that does
    complete: an opportunistic ENO opener's third SYN retransmission, which leaves ENO out
    (RFC 8547 §4.6 exception). Kernels with tcp_syn_linear_timeouts >= 3 send the first
    retransmissions 1 s apart, so that SYN leaves at 3 s and 5 s keeps 2 s of margin; older
    kernels double the wait (1, 3, 7 s) and keep 10 s."""
    try:
        linear = int(LINEAR_TIMEOUTS.read_text())
    except (OSError, ValueError):
        linear = 0
    return 5.0 if linear >= 3 else 10.0


def close_run(ctx: RunContext) -> None:
    """End of the run (also an interrupted one): close the pooled network."""
    POOL.close(ctx)


def classify(record: dict[str, Any]) -> str:
    if record["outcome"] == "encrypted":
        peer = record.get("session_id_peer")
        return "encrypted" if peer is None or peer == record.get("session_id") \
            else "encrypted-mitm"
    if record["outcome"] == "plaintext":
        # Delivered in clear; if the bytes differ, nobody noticed but the workload's check.
        return "plaintext" if record["bytes_ok"] else "plaintext-corrupted"
    error = (record.get("error") or "").lower()
    for needle, cls in (("required", "failed:refused"), ("policy", "failed:refused"),
                        ("integrity", "failed:integrity"), ("tag", "failed:integrity"),
                        ("bad_record_mac", "failed:integrity"), ("reset", "failed:reset"),
                        ("connection refused", "failed:reset"),
                        ("timed out", "failed:timeout"), ("timeout", "failed:timeout")):
        if needle in error:
            return cls
    return "failed:other"


def analyse(run_dir: Path) -> dict[str, Any]:
    records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    rows = []
    for r in records:
        cls = classify(r)
        rows.append({
            "proto": r["proto"], "policy": r["policy"] or "-", "middlebox": r["middlebox"],
            "class": cls, "bytes_ok": bool(r["bytes_ok"]),
            # Was the application told what happened? Only meaningful where something
            # could have been negotiated: ENO protocols, or any failure.
            "told": (bool(r.get("fallback_reason") or r.get("error"))
                     if r.get("policy") or cls.startswith("failed") else None),
            "fallback_reason": r.get("fallback_reason"), "error": r.get("error"),
            "time_to_outcome_ms": r.get("ttfb_ms") if r.get("ttfb_ms") is not None
            else r.get("total_ms"),
        })
    frame = pd.DataFrame(rows)
    frame.to_csv(run_dir / "fallback_connections.csv", index=False)
    matrix = (frame.groupby(["proto", "policy", "middlebox"])
              .agg(outcome=("class", lambda s: s.mode().iloc[0]),
                   consistent=("class", lambda s: int(s.nunique() == 1)),
                   bytes_ok=("bytes_ok", "all"),
                   told=("told", lambda s: None if s.isna().all() else bool(s.dropna().all())),
                   time_to_outcome_ms=("time_to_outcome_ms", "median"),
                   reason=("fallback_reason", lambda s: s.dropna().iloc[0] if s.notna().any()
                           else None))
              .reset_index())
    matrix.to_csv(run_dir / "fallback_matrix.csv", index=False, float_format="%.2f")
    heatmap(matrix, run_dir / "fallback_heatmap.png")
    return {"cells": len(matrix), "inconsistent": int((matrix["consistent"] == 0).sum())}


def heatmap(matrix: pd.DataFrame, path: Path) -> None:
    matrix = matrix.assign(arm=matrix["proto"] + " / " + matrix["policy"])
    grid = matrix.pivot(index="arm", columns="middlebox", values="outcome")
    # A cell no point ran (the SYN-data arms meet only the boxes of SYN_BOXES) stays blank.
    codes = grid.apply(lambda col: col.map(
        lambda v: CLASSES.index(v) if isinstance(v, str) else float("nan")))
    colours = ["#1a9850", "#fdae61", "#91bfdb", "#542788", "#762a83", "#d73027", "#f46d43",
               "#fee090", "#999999"]
    cmap = matplotlib.colors.ListedColormap(colours)
    # Room for the arm labels (8 pt, about 0.065 in per character) beside the cells: with few
    # middleboxes (a test's single column) the cells alone leave no margin for them.
    labels_in = 0.065 * max(len(str(arm)) for arm in grid.index)
    fig, ax = plt.subplots(figsize=(0.6 + labels_in + 0.55 * len(grid.columns),
                                    1.6 + 0.42 * len(grid)))
    ax.imshow(codes.to_numpy(dtype=float), cmap=cmap, vmin=-0.5, vmax=len(CLASSES) - 0.5,
              aspect="auto")
    ax.set_xticks(range(len(grid.columns)), grid.columns, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(grid.index)), grid.index, fontsize=8)
    for (i, j), value in pd.DataFrame(codes.to_numpy(dtype=float)).stack().items():
        if value == value:  # not NaN: a cell that ran
            ax.text(j, i, SHORT[CLASSES[int(value)]], ha="center", va="center", fontsize=6)
    ax.set_title("What the application got, per protocol and middlebox")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # a title wider than a narrow grid
    plt.close(fig)
