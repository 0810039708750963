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
import importlib
import importlib.metadata
import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from testbed.errors import ConfigError
from testbed.net.shaping import choose_backend

EXPERIMENTS = {"latency": "experiments.latency"}
ALL = ["latency"]
PACKAGES = ("tcpinc-testbed", "mininet", "scapy", "pandas", "matplotlib", "cryptography",
            "pyOpenSSL", "NetfilterQueue")
REPO = Path(__file__).resolve().parent.parent


@dataclass
class RunContext:
    run_dir: Path
    profile: str
    repeat: int | None
    seed: int
    link_backend: str


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
        "git_dirty": bool(_git("status", "--porcelain")),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "host_cpus": _cpu_count(),
        "link_backend": backend,
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


def run_experiment(name: str, ctx: RunContext, args: dict[str, Any]) -> dict[str, Any]:
    module = importlib.import_module(EXPERIMENTS[name])
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    meta_path = ctx.run_dir / "metadata.json"
    if not meta_path.exists():
        meta_path.write_text(json.dumps(metadata(name, args, ctx.link_backend), indent=2))
    done_path = ctx.run_dir / "points.jsonl"
    done = set()
    if done_path.exists():
        done = {line.strip() for line in done_path.read_text().splitlines() if line.strip()}
    points = module.points(ctx.profile)
    todo = [p for p in points if point_key(p) not in done]
    progress = Progress(len(todo), name)
    with (ctx.run_dir / "records.jsonl").open("a") as records, done_path.open("a") as marks:
        for point in todo:
            for record in module.run_point(point, ctx):
                records.write(json.dumps({**point, **record}) + "\n")
            records.flush()
            marks.write(point_key(point) + "\n")
            marks.flush()
            progress.step(" ".join(f"{k}={v}" for k, v in point.items()))
    summary: dict[str, Any] = module.analyse(ctx.run_dir)
    meta = json.loads(meta_path.read_text())
    meta["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    meta_path.write_text(json.dumps(meta, indent=2))
    return summary


def run_cli(args: argparse.Namespace) -> None:
    names = ALL if args.experiment == "all" else [args.experiment]
    for name in names:
        if name not in EXPERIMENTS:
            raise ConfigError(f"unknown experiment {name!r}",
                              f"choose from {', '.join(EXPERIMENTS)} or all")
    if args.repeat is not None and args.repeat < 1:
        raise ConfigError(f"--repeat must be >= 1, got {args.repeat}")
    backend = choose_backend(args.link_backend)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for name in names:
        run_dir = Path(args.out) / name / f"{stamp}-{args.profile}"
        ctx = RunContext(run_dir, args.profile, args.repeat, args.seed, backend)
        given = {k: v for k, v in vars(args).items() if k != "func"}
        summary = run_experiment(name, ctx, given)
        print(json.dumps({"experiment": name, "run_dir": str(run_dir), **summary}))
