"""results/REPORT.md: every plot, every number traced to its run directory, and the
questions argued at the IETF 93 TCPINC session (Prague, July 2015) answered with measurements.

The report reads only finished run directories (the newest of each experiment
under the results root); a question whose arms were not measured says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pandas as pd

from experiments import bulk, runtime, syndata, web
from experiments.ladders import section_ladders
from experiments.runner import ALL
from experiments.theory import THEORY_RTTS
from experiments.timing import verdict_line
from testbed.bench_endpoints import HOST_TARGET_MS

BEYOND = "beyond the drafts"


def latest_runs(root: Path) -> dict[str, Path]:
    """The newest finished run directory of each experiment (run ids sort by time)."""
    out: dict[str, Path] = {}
    for name in ALL:
        run = latest_run(root, name)
        if run is not None:
            out[name] = run
    return out


def latest_run(root: Path, name: str) -> Path | None:
    runs = []
    for meta_path in (root / name).glob("*/metadata.json"):
        meta = json.loads(meta_path.read_text())
        if meta.get("finished"):
            runs.append((meta["finished"], meta_path.parent))
    return max(runs)[1] if runs else None


def _table(frame: pd.DataFrame, floatfmt: str = "{:.2f}") -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        cells = []
        for col in cols:
            value = row[col]
            if isinstance(value, float):
                cells.append("" if pd.isna(value) else floatfmt.format(value))
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root))


def _config(run: Path) -> str:
    meta = json.loads((run / "metadata.json").read_text())
    args = meta.get("arguments", {})
    dirty = " (dirty)" if meta.get("git_dirty") else ""
    text = (f"run `{run.name}`: profile {args.get('profile')}, seed {meta.get('seed')}, "
            f"link backend **{meta.get('link_backend')}**, kernel {meta.get('kernel')}, "
            f"commit `{str(meta.get('git_commit'))[:12]}`{dirty}")
    return text + _workers_note(meta)


def _workers_note(meta: dict[str, object]) -> str:
    """Points run on several machines: how many, and a warning when they disagree on the
    kernel or link backend (their figures are then not one population)."""
    workers = meta.get("workers")
    if not isinstance(workers, list) or len(workers) < 2:
        return ""
    hosts = sorted({str(w.get("host")) for w in workers if isinstance(w, dict)})
    note = f", {len(workers)} workers on {', '.join(hosts)}"
    mismatch = meta.get("worker_mismatch")
    if isinstance(mismatch, dict) and mismatch:
        differ = "; ".join(f"{k}: {', '.join(v)}" for k, v in mismatch.items())
        note += (f" — **WARNING: the workers disagree ({differ}); each record names its "
                 f"worker, compare only points of one kind**")
    return note


def _ttfb(lat: pd.DataFrame | None, proto: str, rtt: float,
          column: str = "ttfb_median_ms") -> float | None:
    if lat is None or column not in lat:
        return None
    row = lat[(lat["proto"] == proto) & (lat["rtt_ms"] == rtt)]
    return None if row.empty or pd.isna(row[column].iloc[0]) else float(row[column].iloc[0])


def _fmt(value: float | None, unit: str = " ms") -> str:
    return "not measured" if value is None else f"{value:.1f}{unit}"


def _fmt3(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.3f} ms"


def _fidelity_line(run: Path) -> list[str]:
    """The run's fidelity verdict (experiments/timing.py), first thing in its section."""
    check = json.loads((run / "metadata.json").read_text()).get("fidelity")
    if check is None:
        return ["Fidelity check: not recorded (a run made before the check existed).", ""]
    return [verdict_line(check), ""]


def section_latency(run: Path, root: Path, cost_run: Path | None = None) -> list[str]:
    summary = pd.read_csv(run / "summary.csv")
    cols = ["proto", "rtt_ms", "n", "ttfb_median_ms", "ttfb_p95_ms", "theory_ms", "error_ms",
            "within_1ms_2pct"]
    split = "protocol_latency_ms" in summary
    if split:
        cols[6:6] = ["protocol_latency_ms", "protocol_error_ms", "host_median_ms"]
    misses = summary[~summary["within_1ms_2pct"].astype(bool)]
    applied_err = float((summary["applied_rtt_ms"] - summary["rtt_ms"]).abs().max())
    text = ["## Latency: time to first byte vs RTT", *_fidelity_line(run), _config(run), "",
            f"![latency]({_rel(run / 'latency.png', root)})", "",
            f"Data: `{_rel(run / 'summary.csv', root)}` (per connection: "
            f"`{_rel(run / 'connections.csv', root)}`)." + (
                " `protocol_latency_ms` is the TTFB minus the time the two hosts held the "
                "flights, from the client-side and server-side captures "
                "(testbed/net/timesplit.py): what the design costs on the path, on any "
                "machine; `host_median_ms` is the rest." if split else ""), "",
            _table(summary[cols]), ""]
    if misses.empty:
        text.append("Every median TTFB is within 1 ms + 2 % of the theory line.")
    else:
        text.append("TTFB outside 1 ms + 2 % of theory: " + ", ".join(
            f"{r.proto} at {r.rtt_ms:g} ms ({r.error_ms:+.2f} ms)" for r in misses.itertuples())
            + ". The link backend applied the configured RTT to within "
            f"{applied_err:.3f} ms (`applied_rtt_ms`).")
    if split:
        worst = summary["protocol_error_ms"].abs().max()
        empty = int(summary["split_empty"].fillna(0).sum())
        text.append(f"Protocol latency is within {worst:.3f} ms of theory at every point "
                    f"(median); {empty} connection(s) have no split (`split_error` in "
                    "connections.csv says why).")
    text += ["", *_host_text(run, root), *_excess_text(run, root, cost_run),
             *_host_target_text(run, root, cost_run)]
    return text + [""]


def _host_text(run: Path, root: Path) -> list[str]:
    """Host time per connection, per arm: the implementation cost, its own finding."""
    path = run / "host_time.csv"
    if not path.exists() or path.stat().st_size < 2:
        return []
    table = pd.read_csv(path)
    if table.empty:
        return []
    return [f"**Host time per connection** (`{_rel(path, root)}`, all RTTs): the time the "
            "client and server held the handshake and request flights (TEP, ENO hook, "
            "application, scheduler). A deployment pays this too; it is not the protocol's "
            "round trips.", "", _table(table, "{:.3f}"), ""]


EXCESS_ARMS = ("plain", "tcpcrypt", "tls", "tls-noeno")


def _excess_text(run: Path, root: Path, cost_run: Path | None) -> list[str]:
    """Where the time beyond theory went (module docstring of experiments/latency.py), and
    the wake-up benchmark that explains host time growing with the RTT."""
    path = run / "excess.csv"
    if not path.exists():
        return []
    table = pd.read_csv(path)
    table = table[table["proto"].isin(EXCESS_ARMS)]
    if table.empty:
        return []
    low, high = table["rtt_ms"].min(), table["rtt_ms"].max()
    ends = table[table["rtt_ms"].isin([low, high])]
    what = ("TTFB beyond theory (`error_ms`), protocol latency beyond theory "
            "(`protocol_error_ms`, the path), and the client's and server's host time"
            if "protocol_error_ms" in table else "TTFB beyond theory, split at the request")
    lines = [f"**Where the excess goes** (`{_rel(path, root)}`, medians at {low:g} and {high:g} "
             f"ms RTT): {what}.", "", _table(ends), ""]
    wakeup = cost_run / "wakeup.csv" if cost_run is not None else None
    if wakeup is None or not wakeup.exists():
        return lines
    bench = pd.read_csv(wakeup).sort_values("gap_ms")
    first, last = bench.iloc[0], bench.iloc[-1]
    return [*lines, f"Host time grows with how long processes sat idle between flights: "
            f"`tcpinc bench wakeup` (`{_rel(wakeup, root)}`) measures a one-byte loopback "
            f"ping-pong at {first['median_us']:.0f} us after {first['gap_ms']:g} ms of "
            f"idleness and {last['median_us']:.0f} us after {last['gap_ms']:g} ms "
            f"({last['ratio_to_smallest_gap']:.1f}x).", ""]


UNENCRYPTED_ARMS = ("plain", "plain-tfo")


def host_target(table: pd.DataFrame) -> pd.DataFrame:
    """Per arm other than plain TCP, its point furthest above plain TCP's TTFB excess in the
    same run (``over_plain_ms``), with the host time (client + server) above plain's behind
    it and the ENO datapath's verdict wait (``eno_query_ms``). Empty without a time split."""
    if not {"client_host_ms", "protocol_error_ms", "eno_query_ms"} <= set(table.columns):
        return pd.DataFrame()
    plain = table[table["proto"] == "plain"].set_index("rtt_ms")
    arms = table[~table["proto"].isin(UNENCRYPTED_ARMS)]
    if plain.empty or arms.empty:
        return pd.DataFrame()
    host = arms["client_host_ms"] + arms["server_host_ms"]
    plain_host = plain["client_host_ms"] + plain["server_host_ms"]
    gap = arms.assign(over_plain_ms=arms["error_ms"] - arms["rtt_ms"].map(plain["error_ms"]),
                      host_over_plain_ms=host - arms["rtt_ms"].map(plain_host)).dropna(
        subset=["over_plain_ms"])
    worst = gap.loc[gap.groupby("proto")["over_plain_ms"].idxmax()]
    return worst[["proto", "rtt_ms", "error_ms", "protocol_error_ms", "over_plain_ms",
                  "host_over_plain_ms", "eno_query_ms"]].reset_index(drop=True)


def host_floor(excess: pd.DataFrame, floor_cpu: pd.DataFrame, wakeup: pd.DataFrame
               ) -> pd.DataFrame:
    """Per encrypted arm the cost run measured and per RTT of the latency run: the floor
    under its host time above plain TCP's on that machine (testbed/bench_endpoints.py,
    ``floor_rows``). The TEP's CPU on the critical chain after the longest idle time the cost
    run measured that is not above the RTT (cold CPU grows with idleness, so a shorter one
    bounds it from below), plus, per flight beyond plain TCP's (two per round trip the
    theory adds, one on each host), the wake-up ping's time after the longest gap not above
    the RTT minus its time after the shortest. Empty where an input is missing."""
    if excess.empty or floor_cpu.empty or wakeup.empty or "error_ms" not in excess:
        return pd.DataFrame()
    plain = excess[excess["proto"] == "plain"].set_index("rtt_ms")["error_ms"]
    pings = wakeup.sort_values("gap_ms")
    warm = float(pings["median_us"].iloc[0])
    rows = []
    for row in excess[excess["proto"].isin(set(floor_cpu["arm"]))].itertuples():
        cpu = floor_cpu[(floor_cpu["arm"] == row.proto) & (floor_cpu["idle_ms"] <= row.rtt_ms)]
        gaps = pings[pings["gap_ms"] <= row.rtt_ms]
        if cpu.empty or gaps.empty or row.rtt_ms not in plain.index:
            continue
        cold = cpu.loc[cpu["idle_ms"].idxmax()]
        extra = max(0, round(2 * (THEORY_RTTS[row.proto][1] - THEORY_RTTS["plain"][1])))
        wake_ms = max(float(gaps["median_us"].iloc[-1]) - warm, 0.0) / 1e3
        floor = cold["client_chain_cold_ms"] + cold["server_chain_cold_ms"] + extra * wake_ms
        rows.append({"proto": row.proto, "rtt_ms": row.rtt_ms,
                     "over_plain_ms": row.error_ms - plain[row.rtt_ms],
                     "cold_idle_ms": cold["idle_ms"],
                     "cold_cpu_ms": cold["client_chain_cold_ms"] + cold["server_chain_cold_ms"],
                     "extra_flights": extra, "cold_wake_ms": wake_ms, "floor_ms": floor})
    return pd.DataFrame(rows)


def _floor_text(run: Path, root: Path, cost_run: Path | None) -> list[str]:
    """The floor table under the host-time target, from the cost run's measurements."""
    if cost_run is None:
        return []
    paths = [run / "excess.csv", cost_run / "floor_cpu.csv", cost_run / "wakeup.csv"]
    if not all(p.exists() for p in paths):
        return []
    table = host_floor(*(pd.read_csv(p) for p in paths))
    if table.empty:
        return []
    above = table[table["floor_ms"] > HOST_TARGET_MS]
    same = "the same run" if cost_run.name == run.name else f"run `{cost_run.name}`"
    verdict = ("Above the target: " + ", ".join(
        f"{r.proto} at {r.rtt_ms:g} ms (floor {r.floor_ms:.3f} ms)" for r in above.itertuples())
        + ". At those points no change to the harness meets the target on this machine; "
        "elsewhere the floor leaves the rest of the host time to the harness."
        if not above.empty else
        "Under the target at every point: what lies above the floor is the harness's own "
        "time (the ENO verdict, the stream and TEP driver, the application), which a faster "
        "harness can cut.")
    return [f"**The floor under it on this machine** (cost experiment, {same}: "
            f"`{_rel(paths[1], root)}`, `{_rel(paths[2], root)}`): the TEP's own CPU on the "
            "critical chain, measured in memory with each flight after `cold_idle_ms` of "
            "sleep (the longest idle time measured that is not above the RTT: a lower bound, "
            "as cold CPU grows with idleness), plus one cold wake-up (`cold_wake_ms`, the "
            "wake-up ping's time after that RTT's idleness beyond its warm time) per flight "
            "beyond plain TCP's; `over_plain_ms` is the TTFB excess above plain TCP's, as "
            "above.", "", _table(table, "{:.3f}"), "", verdict, ""]


def _host_target_text(run: Path, root: Path | None = None,
                      cost_run: Path | None = None) -> list[str]:
    """Issue 13's host-time target: met, or by how much not, and where the time went."""
    path = run / "excess.csv"
    worst = host_target(pd.read_csv(path)) if path.exists() else pd.DataFrame()
    if worst.empty:
        return []
    floor = _floor_text(run, root or run.parent, cost_run)
    head = (f"**Host-time target** (issue 13: every encrypted arm's median TTFB excess over "
            f"theory at most {HOST_TARGET_MS:g} ms above plain TCP's in the same run, at "
            "every RTT): ")
    missed = worst[worst["over_plain_ms"] > HOST_TARGET_MS]
    if missed.empty:
        return [head + "met at every point of every arm.", "", *floor]
    return [head + f"**not met** by {len(missed)} of {len(worst)} arms; each arm's point "
            f"furthest above plain TCP ({missed['over_plain_ms'].max():.2f} ms at worst, "
            f"{missed['over_plain_ms'].max() - HOST_TARGET_MS:.2f} ms over the target):", "",
            _table(worst, "{:.3f}"), "",
            f"Protocol latency stays within {worst['protocol_error_ms'].abs().max():.2f} ms "
            "of theory at these points, so the gap is the endpoints' own time "
            "(`host_over_plain_ms`: client plus server host time above plain TCP's): the "
            "TEP's CPU on each flight the peer waits for, run after the process slept a "
            "round trip, one more wake-up per side than plain TCP, and on ENO arms the wait "
            "for the datapath's verdict after the TCP handshake (`eno_query_ms`, the "
            "client's; the server waits for its own). `tcpinc bench endpoints` gives the "
            "host time per flight beside the TEP's in-memory CPU on the critical chain, warm "
            "and cold (each flight after a round trip of sleep, as here): on a machine whose "
            "caches do not outlast that idleness the cold CPU is most of the gap, and no "
            "change to the harness removes it (README, Results).", "", *floor]


def section_roundtrips(run: Path, root: Path) -> list[str]:
    table = pd.read_csv(run / "roundtrips.csv")
    bad = table[~table["agrees"].astype(bool)]
    text = ["## Round trips before the first application byte (from the pcaps)", _config(run),
            "", f"Data: `{_rel(run / 'roundtrips.csv', root)}`. Flights: C = client flight, "
            "S = server flight; pure ACKs do not count.", "", _table(table), ""]
    if bad.empty:
        text.append("Every protocol's counted round trips agree with the theory table.")
    else:
        text.append("**Disagreements with theory:** " + ", ".join(
            f"{r.proto} (send {r.rt_send_measured} vs {r.rt_send_theory:g}, first response "
            f"{r.rt_resp_measured} vs {r.rt_resp_theory:g})" for r in bad.itertuples()))
    if "reordered_connections" in table:
        moved = table[table["reordered_connections"] > 0]
        text += ["", "Reordering on the loss-free link (a SACK block above the cumulative ACK "
                 "before the first FIN): " + ("none, on every arm and ENO datapath." if
                 moved.empty else ", ".join(f"{r.proto} on {r.datapath}: "
                                            f"{r.reordered_connections} of {r.connections}"
                                            for r in moved.itertuples()))]
    if "dup_ack_connections" in table:
        dup = table[table["dup_ack_connections"] > 0]
        text += ["", "Duplicate ACKs or SACK blocks other than D-SACKs (a segment overtook "
                 "another): " + ("none, on every arm and ENO datapath." if dup.empty else
                 ", ".join(f"{r.proto} on {r.datapath}: {r.dup_ack_connections} of "
                           f"{r.connections}" for r in dup.itertuples()))]
    return text + [""]


def section_fallback(run: Path, root: Path) -> list[str]:
    matrix = pd.read_csv(run / "fallback_matrix.csv")
    counts = (matrix.assign(arm=matrix["proto"] + " / " + matrix["policy"])
              .pivot_table(index="arm", columns="outcome", values="middlebox", aggfunc="count",
                           fill_value=0).reset_index())
    return ["## Fallback: protocol x middlebox", _config(run), "",
            f"![fallback]({_rel(run / 'fallback_heatmap.png', root)})", "",
            f"Matrix: `{_rel(run / 'fallback_matrix.csv', root)}`. Number of middlebox models "
            "per outcome:", "", _table(counts), ""]


def section_loss(run: Path, root: Path) -> list[str]:
    summary = pd.read_csv(run / "loss_summary.csv")
    return ["## Handshake completion under loss", _config(run), "",
            f"![loss]({_rel(run / 'loss_cdf.png', root)})", "",
            f"Data: `{_rel(run / 'loss_summary.csv', root)}`.", "", _table(summary), ""]


def section_cost(run: Path, root: Path) -> list[str]:
    hs = pd.read_csv(run / "handshake_cost.csv")
    tp = pd.read_csv(run / "throughput.csv")
    return ["## Cost", _config(run), "", f"![cost]({_rel(run / 'cost.png', root)})", "",
            f"Handshakes (in memory, one core): `{_rel(run / 'handshake_cost.csv', root)}`", "",
            _table(hs, "{:.3f}"), "", *_cold_text(hs),
            f"Bulk transfer over loopback: `{_rel(run / 'throughput.csv', root)}`", "",
            _table(tp, "{:.3f}"), "", *_datapath_text(run, root)]


def _cold_text(hs: pd.DataFrame) -> list[str]:
    """What idleness does to a handshake's CPU (the cold columns), where the run has them."""
    if not {"client_cpu_cold_ms", "server_cpu_cold_ms", "cold_idle_ms"} <= set(hs.columns):
        return []
    cold = hs.dropna(subset=["client_cpu_cold_ms", "server_cpu_cold_ms"])
    if cold.empty:
        return []
    ratios = ((cold["client_cpu_cold_ms"] + cold["server_cpu_cold_ms"])
              / (cold["client_cpu_ms"] + cold["server_cpu_ms"]))
    idle = " / ".join(f"{v:g}" for v in sorted(set(cold["cold_idle_ms"])))
    return [f"`*_cold_ms`: the same handshakes with {idle} ms of sleep before each flight, as an "
            f"endpoint waits a round trip between flights on a path: {ratios.min():.1f}-"
            f"{ratios.max():.1f}x the CPU of back-to-back handshakes on this machine. The "
            "latency arms' host time pays the cold figure (`tcpinc bench endpoints` sets it "
            "beside the host time per arm).", ""]


def section_datapath(run: Path, root: Path) -> list[str]:
    table = pd.read_csv(run / "datapath.csv")
    text = ["## ENO datapath: NFQUEUE hook against the in-kernel option", _config(run), "",
            f"![datapath]({_rel(run / 'datapath.png', root)})", "",
            f"Data: `{_rel(run / 'datapath.csv', root)}`. Same arms and links, ENO through "
            "the userspace NFQUEUE hook or written and read by the bpf sock_ops program; "
            "`eno_query_median_ms` is the wait between the TCP handshake and the ENO verdict, "
            "`client_host_ms` / `server_host_ms` the host time the capture split gives each "
            "end.", "", _table(table, "{:.3f}"), ""]
    pivot = table.pivot_table(index=["proto", "rtt_ms"], columns="datapath",
                              values="excess_ms")
    if {"nfqueue", "bpf"} <= set(pivot.columns):
        gains = [f"{proto} at {rtt:g} ms: {row['nfqueue'] - row['bpf']:+.2f} ms"
                 for (proto, rtt), row in pivot.iterrows()]
        text += ["Median TTFB saved by the in-kernel option over the hook: "
                 + "; ".join(gains) + ".", ""]
    moved = table[table["reordered_connections"] > 0]
    text += ["Reordering (SACK block above the ACK before the first FIN): "
             + ("none." if moved.empty else ", ".join(
                 f"{r.proto} {r.rtt_ms:g} ms on {r.datapath}: {r.reordered_connections}"
                 for r in moved.itertuples())), ""]
    return text


def _datapath_text(run: Path, root: Path) -> list[str]:
    """Packet intercept (NFQUEUE hook) against the in-kernel option (bpf sock_ops)."""
    path = run / "eno_datapath.csv"
    if not path.exists():
        return []
    table = pd.read_csv(path)
    text = ["### ENO datapath: packet intercept against an in-kernel option", "",
            f"![eno datapath]({_rel(run / 'eno_datapath.png', root)})", "",
            f"Data: `{_rel(path, root)}` (`tcpinc bench eno-hook`: 0 ms link, ENO with the "
            "test TEP interleaved with plain TCP, added = median of the paired differences). "
            "Per connection, the NFQUEUE hook sends every handshake-phase segment of both "
            "hosts to a userspace process and back; the bpf program writes and reads the "
            "option inside the kernel's own TCP processing and queues nothing.", "",
            _table(table, "{:.3f}"), ""]
    by = {str(r.datapath): r for r in table.itertuples()}
    if "nfqueue" in by and "bpf" in by:
        nfq, bpf = by["nfqueue"], by["bpf"]
        text += [f"Added TCP-connect time of ENO over plain TCP: "
                 f"{nfq.eno_tcp_connect_added_median_ms:.3f} ms through the hook, "
                 f"{bpf.eno_tcp_connect_added_median_ms:.3f} ms in the kernel (median); "
                 f"per intercepted segment the hooks spend "
                 f"{nfq.hook_cpu_us_per_packet:.0f} µs of CPU "
                 f"({int(nfq.hook_packets)} segments), the bpf datapath none in userspace "
                 f"({int(bpf.nfqueue_rules)} NFQUEUE rules).", ""]
    return text


def _outcomes(fb: pd.DataFrame | None, proto: str, policy: str) -> dict[str, int]:
    if fb is None:
        return {}
    rows = fb[(fb["proto"] == proto) & (fb["policy"] == policy)]
    return {str(k): int(v) for k, v in rows["outcome"].value_counts().items()}


def _box(fb: pd.DataFrame | None, proto: str, policy: str, box: str) -> str:
    if fb is None:
        return "not measured"
    row = fb[(fb["proto"] == proto) & (fb["policy"] == policy) & (fb["middlebox"] == box)]
    return "not measured" if row.empty else str(row["outcome"].iloc[0])


def _outcome_ms(fb: pd.DataFrame | None, proto: str, box: str) -> str:
    """Median time to outcome of one opportunistic cell, as text."""
    if fb is None:
        return "not measured"
    row = fb[(fb["proto"] == proto) & (fb["policy"] == "opportunistic") & (fb["middlebox"] == box)]
    if row.empty or pd.isna(row["time_to_outcome_ms"].iloc[0]):
        return "not measured"
    return f"{float(row['time_to_outcome_ms'].iloc[0]) / 1000:.1f} s"


def section_questions(runs: dict[str, Path], root: Path) -> list[str]:
    src = {k: f"`{_rel(v, root)}`" for k, v in runs.items()}
    lines = _questions_latency(runs, src)
    if "fallback" in runs:
        lines += _questions_middleboxes(pd.read_csv(runs["fallback"] / "fallback_matrix.csv"),
                                        src)
    if "cost" in runs:
        lines += _questions_cost(pd.read_csv(runs["cost"] / "handshake_cost.csv"), src)
    return lines


def _questions_latency(runs: dict[str, Path], src: dict[str, str]) -> list[str]:
    """The latency questions (IETF 93): tcpcrypt vs TLS 1.3, and TFO."""
    lat = pd.read_csv(runs["latency"] / "summary.csv") if "latency" in runs else None
    rtt = 100.0
    # Protocol latency (TTFB minus host time) answers questions about the designs; runs made
    # before the time split fall back to the TTFB.
    column = "protocol_latency_ms" if lat is not None and "protocol_latency_ms" in lat \
        else "ttfb_median_ms"
    what = ("median protocol latency (time to first response byte minus the time the hosts "
            "held the flights; the measured TTFB is in the latency table)"
            if column == "protocol_latency_ms" else "median time to first response byte")
    t = {p: _ttfb(lat, p, rtt, column) for p in (
        "plain", "plain-tfo", "tcpcrypt", "tcpcrypt-resume", "tls", "tls-0rtt", "tls-noeno",
        "tls-noeno-tfo", "tls-noeno-0rtt-tfo")}
    lines = ["## The IETF 93 questions, answered with measurements", "",
             f"Latency numbers: {what} at {rtt:g} ms RTT "
             f"({src.get('latency', 'latency not run')}).", "",
             "**\"tcpcrypt works on the first packet, lower latency\" / \"in terms of latency "
             "it's comparable, because 1.3 is more aggressive\".** "
             f"tcpcrypt fresh {_fmt(t['tcpcrypt'])} vs TCP-use-TLS full {_fmt(t['tls'])} "
             f"(plain TCP {_fmt(t['plain'])}). Both need the TCP handshake and one more round "
             "trip before the request: equal in theory (2 / 3 RTT) and in measurement. "
             f"Resumed tcpcrypt {_fmt(t['tcpcrypt-resume'])} matches TLS 0-RTT "
             f"{_fmt(t['tls-0rtt'])} ({BEYOND} for TLS under ENO) while keeping forward "
             "secrecy per resumption.", "",
             "**\"If we have TFO things should end in one round-trip\".** Under ENO neither TEP "
             "may use TFO (RFC 8547 §4.7). Without ENO, TLS 1.3 with TFO "
             f"{_fmt(t['tls-noeno-tfo'])}, and with TFO plus 0-RTT {_fmt(t['tls-noeno-0rtt-tfo'])}"
             f" (one RTT; plain TCP+TFO {_fmt(t['plain-tfo'])}). The one-round-trip end needs "
             "data in the SYN, which the TCPINC designs do not define. RFC 8547 §4.7 lets a "
             "TEP define it; the labelled variants that do (`tcpcrypt-syn`, `tls-syn`, "
             "`tls-0rtt-syn`) are measured in the section \"Data on the SYN\" below: each "
             "saves one round trip against its twin, and only 0-RTT data on the SYN reaches one "
             "RTT, with TLS 0-RTT's costs (no forward secrecy, replay unless the server keeps "
             "tickets single-use).", ""]
    return lines


def _questions_middleboxes(fb: pd.DataFrame, src: dict[str, str]) -> list[str]:
    """The middlebox questions (IETF 93), from the fallback matrix."""
    lines = ["**Middlebox friendliness** (fallback matrix, "
             f"{src['fallback']}; number of middlebox models per outcome):", ""]
    for proto in ("tcpcrypt", "tls"):
        for policy in ("opportunistic", "required"):
            got = _outcomes(fb, proto, policy)
            text = ", ".join(f"{n} {outcome}" for outcome, n in got.items())
            lines.append(f"- {proto} / {policy}: {text or 'not measured'}")

    def box(proto: str, name: str) -> str:
        return f"`{_box(fb, proto, 'opportunistic', name)}`"

    lines += ["", "**\"It doesn't look like TLS\" / \"a bunch of hardware recognizes "
              f"TLS\".** On port 443: dpi-443 gives tcpcrypt {box('tcpcrypt', 'dpi-443')} "
              f"and TCP-use-TLS {box('tls', 'dpi-443')}; the strict TLS 1.2 box gives "
              f"tcpcrypt {box('tcpcrypt', 'tls12-strict')} and TCP-use-TLS "
              f"{box('tls', 'tls12-strict')} (compatibility mode on). A TLS-intercepting "
              f"proxy gives ordinary TLS without ENO {_box(fb, 'tls-noeno', '-', 'tls-mitm')}"
              " (both ends complete a handshake; only comparing session IDs reveals the "
              f"interception), while TCP-use-TLS gets {box('tls', 'tls-mitm')}: the proxy "
              "terminates TCP, so ENO never reaches the server. A box that silently drops "
              "SYNs with unknown options gives tcpcrypt "
              f"{box('tcpcrypt', 'drop-syn-unknown-option')} and TCP-use-TLS "
              f"{box('tls', 'drop-syn-unknown-option')} after "
              f"{_outcome_ms(fb, 'tls', 'drop-syn-unknown-option')}: an opportunistic active "
              "opener leaves ENO out of its third SYN retransmission (RFC 8547 §4.6 "
              "exception; two unanswered retransmissions, as Linux MPTCP does for "
              "MP_CAPABLE), while `required` keeps ENO and gets "
              f"`{_box(fb, 'tls', 'required', 'drop-syn-unknown-option')}`.", ""]
    return lines


def _questions_cost(cost: pd.DataFrame, src: dict[str, str]) -> list[str]:
    """The cost question (IETF 93): server CPU per handshake."""

    def cpu(tep: str, variant: str) -> float | None:
        row = cost[(cost["tep"].str.startswith(tep)) & (cost["variant"] == variant)]
        return None if row.empty else float(row["server_cpu_ms"].iloc[0])
    fresh, tls_full = cpu("tcpcrypt-x25519", "fresh"), cpu("tls", "full")
    ratio = f"{tls_full / fresh:.1f}x" if fresh and tls_full else "not measured"
    return [f"**Cost** ({src['cost']}): server CPU per handshake tcpcrypt-x25519 "
            f"{_fmt3(fresh)}, resumed {_fmt3(cpu('tcpcrypt-x25519', 'resumed'))}; "
            f"TCP-use-TLS full {_fmt3(tls_full)}, resumed "
            f"{_fmt3(cpu('tls', 'resumed (beyond the draft)'))}. The tcpcrypt paper "
            "(2010) reported 36x the connections per second of an SSL server; against "
            f"TLS 1.3 on OpenSSL the server-CPU gap measured here is {ratio}.", ""]


def write_report(root: Path) -> Path:
    runs = latest_runs(root)
    # The latency section explains its excess with the cost run's wake-up benchmark.
    sections: dict[str, Callable[[Path, Path], list[str]]] = {
        "latency": partial(section_latency, cost_run=runs.get("cost")),
        "roundtrips": section_roundtrips, "fallback": section_fallback,
        "loss": section_loss, "cost": section_cost, "datapath": section_datapath,
        "bulk": bulk.section, "web": web.section,
    }
    lines = ["# TCPINC evaluation report", "",
             "Generated by `tcpinc run all` (or `tcpinc report`) from the newest finished run "
             "of each experiment below. TLS TEP id 0x30 is non-standard; TLS resumption and "
             f"0-RTT under ENO are {BEYOND}.", ""]
    for name in ALL:
        if name in runs:
            lines += sections[name](runs[name], root)
        else:
            lines += [f"## {name}", "", "Not run yet.", ""]
    lines += section_questions(runs, root)
    lines += syndata.section(latest_run(root, "syndata"), root)
    lines += section_ladders(root)
    lines += runtime.section({name: runs[name] for name in ALL if name in runs})
    path = root / "REPORT.md"
    path.write_text("\n".join(lines) + "\n")
    return path
