"""`tcpinc compare RUN_A RUN_B`: does a rerun repeat the figures of a run?

Per point (the parameters the run's ``points.jsonl`` names: protocol, RTT, ...) the median
TTFB of the connections that count (experiments/common.py ``counts_for_arm``; completed
ones only) in each run, their difference in ms and in percent of run A's median, and
whether it lies within the tolerance (2 % by default, the rerun target of the latency
figures); beside it the medians of the protocol latency where both runs have the time
split (testbed/net/timesplit.py). Then each run's fidelity verdict (``fidelity.noisy`` in
metadata.json, experiments/timing.py) and whether the two agree.

The runs must be of one experiment and one profile; a different seed, commit or link
backend is said in the header, not refused (comparing them may be the point). The rerun
repeats when every point of either run is in both, has a median in both, lies within the
tolerance, and the verdicts agree; ``tcpinc compare`` then exits 0, else 1.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.common import counts_for_arm
from testbed.errors import ConfigError
from testbed.userinput import read_run_metadata

TOLERANCE_PCT = 2.0
HEADER_KEYS = ("git_commit", "git_dirty", "seed", "link_backend", "eno_datapath", "kernel",
               "started")


@dataclass
class Run:
    """What the comparison reads of one run directory."""

    path: Path
    meta: dict[str, Any]
    params: list[str]  # the point's parameter names, in points.jsonl's order
    ttfb: dict[str, list[float]] = field(default_factory=dict)  # point key -> TTFBs (ms)
    latency: dict[str, list[float]] = field(default_factory=dict)  # -> protocol latency


def _lines(path: Path, what: str) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"compare: cannot read {path}: {exc.strerror}",
                          "give a run directory written by `tcpinc run`") from None
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            raise ConfigError(f"compare: {path} line {number} is not JSON",
                              f"the run's {what} is damaged; rerun or resume it") from None
        if not isinstance(value, dict):
            raise ConfigError(f"compare: {path} line {number} is not an object",
                              f"the run's {what} is damaged; rerun or resume it")
        out.append(value)
    return out


def point_key(point: dict[str, Any], params: list[str]) -> str:
    """A readable name of a point: ``proto=tls rtt_ms=10``."""
    return " ".join(f"{name}={point.get(name)}" for name in params)


def load(run_dir: Path) -> Run:
    meta = read_run_metadata(run_dir, "compare")
    params: list[str] = []
    for point in _lines(run_dir / "points.jsonl", "points.jsonl"):
        params += [name for name in point if name not in params]
    run = Run(run_dir, meta, params)
    for record in _lines(run_dir / "records.jsonl", "records.jsonl"):
        if "ttfb_ms" not in record or "proto" not in record:
            raise ConfigError(f"compare: {run_dir} ({meta['experiment']}) has no TTFB per "
                              "connection", "compare runs of latency or datapath")
        if not counts_for_arm(record) or not record.get("bytes_ok") \
                or record.get("ttfb_ms") is None:
            continue
        key = point_key(record, params)
        run.ttfb.setdefault(key, []).append(float(record["ttfb_ms"]))
        if record.get("protocol_latency_ms") is not None and not record.get("split_error"):
            run.latency.setdefault(key, []).append(float(record["protocol_latency_ms"]))
    return run


def _median(values: list[float] | None) -> float | None:
    return statistics.median(values) if values else None


def compare_point(key: str, a: Run, b: Run, tolerance_pct: float) -> dict[str, Any]:
    """One point's medians in both runs and the verdict on their difference."""
    ma, mb = _median(a.ttfb.get(key)), _median(b.ttfb.get(key))
    row: dict[str, Any] = {"point": key, "n_a": len(a.ttfb.get(key, [])),
                           "n_b": len(b.ttfb.get(key, [])), "median_a_ms": ma,
                           "median_b_ms": mb, "diff_ms": None, "diff_pct": None,
                           "within": False}
    la, lb = _median(a.latency.get(key)), _median(b.latency.get(key))
    row["latency_a_ms"], row["latency_b_ms"] = la, lb
    row["latency_diff_ms"] = None if la is None or lb is None else lb - la
    if ma is None or mb is None:
        row["why"] = "no completed connection in " + ("A" if ma is None else "B")
        return row
    row["diff_ms"] = mb - ma
    row["diff_pct"] = (mb - ma) / ma * 100.0 if ma else None
    row["within"] = row["diff_pct"] is not None and abs(row["diff_pct"]) <= tolerance_pct
    return row


def verdicts(a: Run, b: Run) -> dict[str, Any]:
    """The fidelity verdicts of both runs (None: the run has no fidelity check)."""
    noisy = [(r.meta.get("fidelity") or {}).get("noisy") for r in (a, b)]
    checked = any(v is not None for v in noisy)
    # Neither run checked (an experiment without the check): nothing to disagree on.
    return {"noisy_a": noisy[0], "noisy_b": noisy[1], "checked": checked,
            "same": noisy[0] == noisy[1],
            "reasons_a": (a.meta.get("fidelity") or {}).get("reasons"),
            "reasons_b": (b.meta.get("fidelity") or {}).get("reasons")}


def compare_runs(dir_a: Path, dir_b: Path, tolerance_pct: float = TOLERANCE_PCT
                 ) -> dict[str, Any]:
    """The whole comparison as data (``format_comparison`` prints it)."""
    if tolerance_pct <= 0:
        raise ConfigError(f"--tolerance must be above 0 %, got {tolerance_pct}")
    a, b = load(dir_a), load(dir_b)
    for key in ("experiment", "profile"):
        va = a.meta["experiment"] if key == "experiment" else a.meta["arguments"].get(key)
        vb = b.meta["experiment"] if key == "experiment" else b.meta["arguments"].get(key)
        if va != vb:
            raise ConfigError(f"compare: {dir_a} is {key} {va!r}, {dir_b} is {vb!r}",
                              f"compare two runs of one {key}")
    keys = list(dict.fromkeys([*a.ttfb, *b.ttfb]))
    rows = [compare_point(k, a, b, tolerance_pct) for k in keys]
    verdict = verdicts(a, b)
    within = sum(1 for r in rows if r["within"])
    diffs = [abs(r["diff_pct"]) for r in rows if r["diff_pct"] is not None]
    return {
        "experiment": a.meta["experiment"], "profile": a.meta["arguments"].get("profile"),
        "run_a": str(dir_a), "run_b": str(dir_b), "tolerance_pct": tolerance_pct,
        "header": {k: [a.meta.get(k), b.meta.get(k)] for k in HEADER_KEYS},
        "points": rows, "within": within, "max_abs_diff_pct": max(diffs, default=None),
        "verdicts": verdict,
        "repeats": bool(rows) and within == len(rows) and verdict["same"],
    }


def _ms(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def format_comparison(result: dict[str, Any]) -> str:
    """The comparison as a table with a header and a closing verdict line."""
    tol = result["tolerance_pct"]
    lines = [f"compare {result['experiment']} --{result['profile']}",
             f"  A: {result['run_a']}", f"  B: {result['run_b']}"]
    for key, (va, vb) in result["header"].items():
        mark = "" if va == vb else "   <- differs"
        lines.append(f"  {key}: A {va}  B {vb}{mark}")
    width = max([len("point"), *(len(r["point"]) for r in result["points"])])
    lines.append(f"{'point':<{width}}  {'n':>5}  {'A ms':>8}  {'B ms':>8}  {'diff ms':>8}  "
                 f"{'diff %':>7}  within {tol:g} %  {'latency A':>9}  {'latency B':>9}")
    for r in result["points"]:
        pct = "-" if r["diff_pct"] is None else f"{r['diff_pct']:+.2f}"
        ok = "yes" if r["within"] else "NO" + (f" ({r['why']})" if r.get("why") else "")
        lines.append(f"{r['point']:<{width}}  {r['n_a']:>2}/{r['n_b']:<2}  "
                     f"{_ms(r['median_a_ms']):>8}  {_ms(r['median_b_ms']):>8}  "
                     f"{_ms(r['diff_ms'], True):>8}  {pct:>7}  {ok:<{len(f'within {tol:g} %')}}"
                     f"  {_ms(r['latency_a_ms']):>9}  {_ms(r['latency_b_ms']):>9}")
    v = result["verdicts"]
    if v["checked"]:
        lines.append(f"noisy: A {_yes(v['noisy_a'])}, B {_yes(v['noisy_b'])} "
                     f"({'same verdict' if v['same'] else 'DIFFERENT verdicts'})")
        for name in ("a", "b"):
            for reason in v[f"reasons_{name}"] or []:
                lines.append(f"  {name.upper()}: {reason}")
    else:
        lines.append("noisy: not checked (neither run has the fidelity check in "
                     "metadata.json)")
    worst = result["max_abs_diff_pct"]
    lines.append(f"{'rerun repeats' if result['repeats'] else 'rerun DOES NOT repeat'}: "
                 f"{result['within']}/{len(result['points'])} points within {tol:g} %, "
                 f"largest |diff| {'-' if worst is None else f'{worst:.2f} %'}")
    return "\n".join(lines)


def _yes(value: bool | None) -> str:
    return "yes" if value else "no"
