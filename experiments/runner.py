"""The shared experiment runner: one run = one directory.

An experiment module defines ``NAME``, ``points(profile) -> list[dict]`` (the
parameter grid), ``run_point(point, ctx) -> list[dict]`` (raw records) and
``analyse(run_dir) -> dict`` (derived CSVs and plots, reading only the run
directory). The runner writes ``metadata.json`` first (arguments, git commit,
kernel, link backend, package versions, seed), appends raw records to
``records.jsonl`` point by point (never rewritten), marks finished points in
``points.jsonl`` so an interrupted run resumes where it stopped (``--resume``),
shows a progress bar with ETA, and finally runs the analysis.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.metadata
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from testbed.errors import ConfigError
from testbed.net import delayhelper
from testbed.userinput import check_name, check_writable_dir, read_run_metadata
from testbed.workload import default_eno_datapath

if TYPE_CHECKING:
    from experiments.executors import Executor

EXPERIMENTS = {
    "latency": "experiments.latency",
    "roundtrips": "experiments.roundtrips",
    "loss": "experiments.loss",
    "fallback": "experiments.fallback",
    "cost": "experiments.cost",
    "bulk": "experiments.bulk",
    "web": "experiments.web",
    "datapath": "experiments.datapath",
    "idle": "experiments.idle",  # no protocol: times the runner and executors
    "syndata": "experiments.syndata",  # SYN-data variants at 100 ms (not in ``all``)
}
ALL = ["latency", "roundtrips", "fallback", "loss", "cost", "datapath", "bulk", "web"]
PACKAGES = ("tcpinc-testbed", "mininet", "scapy", "pandas", "matplotlib", "cryptography",
            "pyOpenSSL", "NetfilterQueue")
REPO = Path(__file__).resolve().parent.parent
# What each record says of the machine that ran its point.
WORKER_KEYS = ("host", "kernel", "link_backend", "delay_helper", "eno_datapath", "address")


@dataclass
class RunContext:
    run_dir: Path
    profile: str
    repeat: int | None
    seed: int
    link_backend: str
    eno_datapath: str = "auto"  # --eno-datapath for ENO arms that name none (resolved on run)


def _git(*args: str) -> str:
    proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                          check=False)
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def _tool_version(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=5)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return "missing"
    text = (proc.stdout or proc.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def metadata(experiment: str, args: dict[str, Any], backend: str) -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "missing"
    return {
        "experiment": experiment,
        "arguments": args,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "HEAD"),
        # Uncommitted changes to the code; results/ (earlier runs, REPORT.md) does not count.
        "git_dirty": bool(_git("status", "--porcelain", "--", ".", ":(exclude)results")),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "host_cpus": _cpu_count(),
        "link_backend": backend,
        "delay_helper": dataclasses.asdict(delayhelper.resolve("auto")),
        "seed": args.get("seed"),
        "packages": versions,
        "tools": {"tcpdump": _tool_version(["tcpdump", "--version"]),
                  "iproute2": _tool_version(["ip", "-V"]),
                  "iptables": _tool_version(["iptables", "--version"])},
    }


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 0


class Progress:
    """A one-line progress bar with ETA on stderr."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.done = total, label, 0
        self.start = time.monotonic()

    def step(self, note: str = "") -> None:
        self.done += 1
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        width = 30
        fill = int(width * self.done / max(self.total, 1))
        bar = "#" * fill + "-" * (width - fill)
        sys.stderr.write(f"\r{self.label} [{bar}] {self.done}/{self.total} "
                         f"{elapsed:5.0f}s eta {eta:4.0f}s {note[:40]:40}")
        if self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def point_key(point: dict[str, Any]) -> str:
    return json.dumps(point, sort_keys=True)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'2/4' -> (2, 4): this machine runs every 4th point starting with the 2nd."""
    if not text:
        return None
    try:
        index, total = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"bad shard {text!r}", "write it as i/n, e.g. 1/4") from None
    if not 1 <= index <= total:
        raise ConfigError(f"shard {text!r} out of range", "need 1 <= i <= n")
    return index, total


def shard_points(points: list[dict[str, Any]], shard: tuple[int, int] | None) -> list[dict]:
    if shard is None:
        return points
    index, total = shard
    return [p for i, p in enumerate(points) if i % total == index - 1]


def select_protocols(points: list[dict[str, Any]], protocols: str | None,
                     keep: str | None = None) -> list[dict]:
    """`--protocols a,b`: keep only points of those protocol arms (experiments without a
    protocol dimension are unaffected); ``keep`` is an arm that always stays (the latency
    run's plain-TCP calibration, experiments/timing.py)."""
    if not protocols:
        return points
    wanted = set(protocols.split(",")) | ({keep} if keep else set())
    return [p for p in points if "proto" not in p or p["proto"] in wanted]


def _read_done(run_dir: Path) -> set[str]:
    path = run_dir / "points.jsonl"
    if not path.exists():
        return set()
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _check_resumable(meta_path: Path, args: dict[str, Any]) -> None:
    """A run directory is only continued with the arguments that started it."""
    old = json.loads(meta_path.read_text()).get("arguments", {})
    for key in ("profile", "repeat", "seed", "shard", "link_backend", "protocols"):
        if old.get(key) != args.get(key):
            raise ConfigError(
                f"{meta_path.parent} was started with {key}={old.get(key)!r}, not "
                f"{args.get(key)!r}", "resume with the same arguments or use a new --run-id"
            )


PointFilter = Callable[[dict[str, Any]], bool]


def run_experiment(name: str, ctx: RunContext, args: dict[str, Any],
                   shard: tuple[int, int] | None = None,
                   executor: Executor | None = None,
                   only: PointFilter | None = None) -> dict[str, Any]:
    """Run (or resume) one experiment on ``executor`` (here by default); the driver alone
    writes the run directory, whichever machine ran a point. ENO arms use
    ``ctx.eno_datapath`` unless they name their datapath (resolved here; the process default
    is restored afterwards; a dask worker resolves the requested one itself). ``only`` keeps
    the points it accepts (the regression matrix runs one middlebox model per test)."""
    with default_eno_datapath(ctx.eno_datapath) as datapath:
        ctx.eno_datapath = datapath
        return _run_experiment(name, ctx, args, shard, executor, only)


def _run_experiment(name: str, ctx: RunContext, args: dict[str, Any],
                    shard: tuple[int, int] | None, executor: Executor | None,
                    only: PointFilter | None = None) -> dict[str, Any]:
    from experiments.executors import LocalExecutor

    started, cpu = time.monotonic(), cpu_seconds()
    module = importlib.import_module(EXPERIMENTS[name])
    executor, concurrency = experiment_executor(
        module, executor or LocalExecutor(ctx.link_backend), bool(args.get("serial")))
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    meta_path = ctx.run_dir / "metadata.json"
    if meta_path.exists():
        _check_resumable(meta_path, args)
    else:
        meta = {**metadata(name, args, ctx.link_backend), "eno_datapath": ctx.eno_datapath}
        meta_path.write_text(json.dumps(meta, indent=2))
    done = _read_done(ctx.run_dir)
    points = shard_points(select_protocols(module.points(ctx.profile), args.get("protocols"),
                                           getattr(module, "CALIBRATION_ARM", None)), shard)
    points = [p for p in points if only is None or only(p)]
    todo = [p for p in points if point_key(p) not in done]
    failed = run_points(name, todo, ctx, args, executor)
    measured = time.monotonic()
    summary: dict[str, Any] = module.analyse(ctx.run_dir)
    meta = json.loads(meta_path.read_text())
    meta["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    # Where the wall time went (summed over the sessions of a resumed run): the points
    # (networks, processes, connections; each record's ``point_s`` is its point's share)
    # and the analysis after them.
    meta["duration_s"] = round(meta.get("duration_s", 0.0) + time.monotonic() - started, 1)
    meta["analysis_s"] = round(meta.get("analysis_s", 0.0) + time.monotonic() - measured, 1)
    # The CPU it took: this process and every process it (or its workers) waited for.
    meta["cpu_s"] = round(meta.get("cpu_s", 0.0) + cpu_seconds() - cpu, 1)
    meta["points_total"] = len(points)
    # How the points of this session ran (one at a time, or groups side by side).
    meta.setdefault("concurrency", []).append(concurrency)
    meta["failed_points"] = failed
    meta.update(worker_summary(ctx.run_dir, meta.get("workers", []), executor.workers()))
    meta_path.write_text(json.dumps(meta, indent=2))
    return {**summary, "failed_points": failed} if failed else summary


def cpu_seconds() -> float:
    """User and system CPU of this process and of the processes it has waited for (the
    servers, clients, hooks, captures and delay lines of its points, its forked workers)."""
    import resource

    own, children = (resource.getrusage(w) for w in (resource.RUSAGE_SELF,
                                                     resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def experiment_executor(module: Any, executor: Executor, serial: bool = False
                        ) -> tuple[Executor, dict[str, Any]]:
    """The executor for one experiment's points, and how they run, for metadata.json.

    Here, an experiment whose points mostly wait and measure no time a busy CPU moves
    declares ``CONCURRENCY`` (workers) with its reason, and optionally ``group_key(point)``
    (points with the same key run one after another in one worker, sharing its network);
    its points then run side by side (experiments/executors.py ConcurrentLocalExecutor).
    Every other experiment, and every one under ``--serial``, runs one point at a time."""
    from experiments.executors import ConcurrentLocalExecutor, LocalExecutor

    workers = int(getattr(module, "CONCURRENCY", 1))
    if not isinstance(executor, LocalExecutor):
        return executor, {"executor": type(executor).__name__, "workers": len(
            executor.workers())}
    if workers < 2 or serial:
        return executor, {"executor": "local", "workers": 1,
                          "reason": "--serial" if serial and workers > 1
                          else "points run one at a time (timing needs a quiet CPU)"}
    group_key = getattr(module, "group_key", None)
    return ConcurrentLocalExecutor(executor.backend, workers, group_key), {
        "executor": "local-concurrent", "workers": workers,
        "grouped_by": getattr(module, "GROUPED_BY", "contiguous chunks"),
        "reason": str(getattr(module, "CONCURRENCY_REASON", ""))}


def run_points(name: str, todo: list[dict[str, Any]], ctx: RunContext, args: dict[str, Any],
                executor: Executor) -> int:
    """Write each outcome as it arrives (records, marks, files), so a killed driver leaves
    a run directory that ``--run-id`` resumes; returns the number of failed points."""
    from experiments.executors import PointFailure, PointTask, code_identity, relocate

    code = code_identity()
    tasks = [PointTask(name, p, ctx.profile, ctx.repeat, ctx.seed,
                       str(args.get("link_backend", ctx.link_backend)), code,
                       str(args.get("eno_datapath") or "auto")) for p in todo]
    progress = Progress(len(todo), name)
    failed = 0
    with (ctx.run_dir / "records.jsonl").open("a") as records, \
            (ctx.run_dir / "points.jsonl").open("a") as marks:
        for outcome in executor.run(tasks, ctx):
            note = " ".join(f"{k}={v}" for k, v in outcome.point.items())
            if isinstance(outcome, PointFailure):
                failed += 1
                with (ctx.run_dir / "failed.jsonl").open("a") as out:
                    out.write(json.dumps({"point": outcome.point, "reason": outcome.reason,
                                          "attempts": outcome.attempts,
                                          "workers": outcome.workers}) + "\n")
                progress.step("FAILED " + note)
                continue
            relocate(outcome, ctx.run_dir)
            _write_files(ctx.run_dir, outcome.appended, outcome.files)
            worker = {**{k: outcome.worker.get(k) for k in WORKER_KEYS},
                      "attempt": outcome.attempts}
            for record in outcome.records:
                records.write(json.dumps({**outcome.point, **record, "worker": worker,
                                          "point_s": round(outcome.seconds, 2)}) + "\n")
            records.flush()
            marks.write(point_key(outcome.point) + "\n")
            marks.flush()
            progress.step(note)
    return failed


def _write_files(run_dir: Path, appended: dict[str, str], files: dict[str, bytes]) -> None:
    for rel, text in appended.items():
        with (run_dir / rel).open("a") as out:
            out.write(text)
    for rel, data in files.items():
        path = run_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def worker_summary(run_dir: Path, known: list[dict[str, Any]],
                   current: list[dict[str, Any]]) -> dict[str, Any]:
    """The workers of every session of this run, and whether the points' workers disagree
    on kernel, link backend, delay line or ENO datapath (the report flags that: such
    points are not comparable)."""
    workers = {w.get("address", "local") + w.get("host", ""): w for w in [*known, *current]}
    seen: dict[str, set[str]] = {k: set() for k in ("kernel", "link_backend", "delay_helper",
                                                    "eno_datapath")}
    for line in (run_dir / "records.jsonl").read_text().splitlines():
        worker = json.loads(line).get("worker") or {}
        for key, values in seen.items():
            if worker.get(key):
                values.add(str(worker[key]))
    mismatch = {k: sorted(v) for k, v in seen.items() if len(v) > 1}
    return {"workers": list(workers.values()), "worker_mismatch": mismatch or None}


def _checked(args: argparse.Namespace) -> tuple[list[str], tuple[int, int] | None]:
    """The experiments and the shard ``args`` name; everything the user gave is checked
    before the first directory is made."""
    names = ALL if args.experiment == "all" else [args.experiment]
    for name in names:
        if name not in EXPERIMENTS:
            raise ConfigError(f"unknown experiment {name!r}",
                              f"choose from {', '.join(EXPERIMENTS)} or all")
    if args.repeat is not None and args.repeat < 1:
        raise ConfigError(f"--repeat must be >= 1, got {args.repeat}")
    shard = parse_shard(args.shard)
    if args.run_id is not None:
        check_name(args.run_id, "--run-id")
    check_protocols(names, args.profile, args.protocols)
    if getattr(args, "workers", None) is not None and not getattr(args, "dry_run", False):
        raise ConfigError("--workers only sizes a --dry-run projection",
                          "add --dry-run, or give a real cluster with --executor dask")
    return names, shard


def run_cli(args: argparse.Namespace) -> int:
    names, shard = _checked(args)
    if getattr(args, "dry_run", False):
        from experiments.projection import dry_run

        dry_run(names, args.profile, getattr(args, "workers", None) or 1, Path(args.out))
        return 0
    check_writable_dir(Path(args.out), "--out")
    datapath = getattr(args, "eno_datapath", "auto")
    from experiments.executors import make_executor

    # Local: root and the tools here; dask: connect and check every worker instead.
    executor, backend = make_executor(args, names)
    run_id = args.run_id or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + f"-{args.profile}"
    if shard and not args.run_id:
        run_id += f"-shard{shard[0]}of{shard[1]}"
    given = {k: v for k, v in vars(args).items() if k not in ("func", "run_id", "out")}
    failed = 0
    started = time.monotonic()
    try:
        for name in names:
            run_dir = Path(args.out) / name / run_id
            ctx = RunContext(run_dir, args.profile, args.repeat, args.seed, backend,
                             datapath)
            summary = run_experiment(name, ctx, given, shard, executor)
            failed += summary.get("failed_points", 0)
            print(json.dumps({"experiment": name, "run_dir": str(run_dir), **summary}))
    finally:
        executor.close()
    if args.experiment == "all" and shard is None:
        from experiments.report import write_report

        print(json.dumps({"report": str(write_report(Path(args.out)))}))
    print_run_time(names, Path(args.out), run_id, time.monotonic() - started)
    if failed:
        print(f"tcpinc: {failed} point(s) failed (reasons in failed.jsonl); "
              f"resume with --run-id {run_id}", file=sys.stderr)
    return 1 if failed else 0


def print_run_time(names: list[str], out: Path, run_id: str, wall_s: float) -> None:
    """The command's wall time and where it went, per experiment (experiments/runtime.py)."""
    from experiments.runtime import experiment_time

    rows = [experiment_time(out / name / run_id) for name in names
            if (out / name / run_id / "metadata.json").exists()]
    print(json.dumps({"wall_s": round(wall_s, 1), "experiments_s": round(
        sum(float(r["wall_s"] or 0.0) for r in rows), 1), "run_time": rows}))


def check_protocols(names: list[str], profile: str, protocols: str | None) -> None:
    """Every arm named in --protocols is one the chosen experiments' profile runs."""
    if not protocols:
        return
    known: set[str] = set()
    for name in names:
        module = importlib.import_module(EXPERIMENTS[name])
        known |= {p["proto"] for p in module.points(profile) if "proto" in p}
    unknown = sorted(set(protocols.split(",")) - known)
    if unknown:
        raise ConfigError(f"--protocols: {', '.join(unknown)} not run by "
                          f"{'/'.join(names)} --{profile}",
                          f"choose from {', '.join(sorted(known))}")


def merge(run_dirs: list[Path], out: Path) -> dict[str, Any]:
    """Combine shard run directories of one experiment into ``out`` and analyse it."""
    metas = [read_run_metadata(d, "merge") for d in run_dirs]
    names = {m["experiment"] for m in metas}
    profiles = {m["arguments"].get("profile") for m in metas}
    if len(names) != 1 or len(profiles) != 1:
        raise ConfigError(f"cannot merge runs of {sorted(names)} / profiles {sorted(profiles)}",
                          "merge shards of one experiment and profile")
    if names - set(EXPERIMENTS):
        raise ConfigError(f"merge: unknown experiment(s) {sorted(names - set(EXPERIMENTS))}",
                          f"merge runs of {', '.join(EXPERIMENTS)}")
    if out.exists():
        raise ConfigError(f"{out} exists", "merge into a new directory")
    check_writable_dir(out, "--out")
    out.mkdir(parents=True)
    seen: set[str] = set()
    with (out / "records.jsonl").open("w") as records, (out / "points.jsonl").open("w") as marks:
        for run_dir in run_dirs:
            for key in sorted(_read_done(run_dir) - seen):
                marks.write(key + "\n")
                seen.add(key)
            records.write((run_dir / "records.jsonl").read_text())
    module = importlib.import_module(EXPERIMENTS[names.pop()])
    wanted = metas[0].get("arguments", {}).get("protocols")
    expected = {point_key(p) for p in select_protocols(module.points(profiles.pop()), wanted,
                                                       getattr(module, "CALIBRATION_ARM", None))}
    meta = {**metas[0], "merged_from": [str(d) for d in run_dirs],
            "complete": expected <= seen, "missing_points": len(expected - seen)}
    (out / "metadata.json").write_text(json.dumps(meta, indent=2))
    summary: dict[str, Any] = module.analyse(out)
    return {"run_dir": str(out), "complete": meta["complete"], **summary}


def analyse_cli(run_dir: Path) -> dict[str, Any]:
    """Re-run the analysis of a finished run directory (reads nothing else)."""
    meta = read_run_metadata(run_dir, "analyse")
    if meta["experiment"] not in EXPERIMENTS:
        raise ConfigError(f"analyse {run_dir}: unknown experiment {meta['experiment']!r}",
                          f"analyse runs of {', '.join(EXPERIMENTS)}")
    module = importlib.import_module(EXPERIMENTS[meta["experiment"]])
    result: dict[str, Any] = module.analyse(run_dir)
    return result
