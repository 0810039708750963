"""Where experiment points run: here (``local``) or on a Dask distributed cluster (``dask``).

A point is self-contained: ``run_point_task(PointTask) -> PointResult`` needs nothing but
the installed project. It runs the experiment's ``run_point`` in a scratch directory and
returns the records, the lines the point appended to ``*.jsonl`` files and the bytes of
every other file it wrote (pcaps). The driver alone writes the run directory
(``experiments.runner``), so a distributed run is laid out exactly like a local one.

Faults: a worker that dies while it runs a point makes Dask's scheduler retry the point
on another worker (its ``allowed-failures``); once the scheduler gives up
(``KilledWorker``) the driver resubmits the point up to ``retries`` more times, then
yields a ``PointFailure`` with the reason. A point that raises is not retried (the same
parameters fail the same way) and is a ``PointFailure`` too.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import importlib.metadata
import os
import platform
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from testbed.errors import ConfigError

if TYPE_CHECKING:
    from experiments.runner import RunContext

REPO = Path(__file__).resolve().parent.parent
CODE_PACKAGES = ("testbed", "experiments", "topologies", "middleboxes")
RESOURCE = "tcpinc"  # one unit per worker: one emulation point at a time on a machine


@dataclass(frozen=True)
class PointTask:
    """Everything a worker needs to run one point (picklable, no paths of the driver)."""

    experiment: str
    point: dict[str, Any]
    profile: str
    repeat: int | None
    seed: int
    link_backend: str  # as asked (e.g. "auto"): each worker resolves it on its own kernel
    code: str  # the driver's code identity (version, commit, digest)
    eno_datapath: str = "auto"  # as asked: the worker resolves it (bpf where it can)


@dataclass
class PointResult:
    point: dict[str, Any]
    records: list[dict[str, Any]]
    worker: dict[str, Any]
    seconds: float  # the point's own time on the worker
    appended: dict[str, str] = field(default_factory=dict)  # *.jsonl name -> lines
    files: dict[str, bytes] = field(default_factory=dict)  # relative path -> content
    scratch: str = ""  # the worker's scratch directory, named in records' paths
    attempts: int = 1


@dataclass
class PointFailure:
    point: dict[str, Any]
    reason: str
    attempts: int
    workers: list[str]


Outcome = PointResult | PointFailure


class Executor(Protocol):
    def workers(self) -> list[dict[str, Any]]: ...

    def run(self, tasks: list[PointTask], ctx: RunContext) -> Iterator[Outcome]: ...

    def close(self) -> None: ...


@lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 over the project's Python sources: a dirty tree differs from its commit."""
    digest = hashlib.sha256()
    for package in CODE_PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@lru_cache(maxsize=1)
def code_identity() -> str:
    from experiments.runner import _git

    try:
        version = importlib.metadata.version("tcpinc-testbed")
    except importlib.metadata.PackageNotFoundError:
        version = "not-installed"
    return f"tcpinc-testbed {version} commit {_git('rev-parse', 'HEAD')[:12]} code {code_digest()}"


def worker_identity(requested_backend: str = "auto", experiments: tuple[str, ...] = (),
                    requested_datapath: str = "auto") -> dict[str, Any]:
    """What a machine is: host, kernel, the link backend and ENO datapath it resolves,
    root, project code, and which of ``experiments`` it can import (importing and resolving
    now also keep those one-time costs, seconds on a loaded machine, out of the first
    point's time)."""
    from experiments.runner import EXPERIMENTS
    from testbed.net.shaping import choose_backend
    from testbed.workload import default_eno_datapath

    try:
        with default_eno_datapath(requested_datapath) as datapath:
            pass
    except ConfigError as exc:
        datapath = f"unavailable: {exc.one_line()}"

    known = []
    for name in experiments:
        if name in EXPERIMENTS:
            importlib.import_module(EXPERIMENTS[name])
            known.append(name)

    try:
        backend = choose_backend(requested_backend)
    except ConfigError as exc:
        backend = f"unavailable: {exc.one_line()}"
    return {"host": socket.gethostname(), "kernel": platform.release(),
            "link_backend": backend, "delay_helper": _delay_helper(), "eno_datapath": datapath,
            "root": os.geteuid() == 0, "code": code_identity(), "experiments": known}


def _delay_helper() -> str:
    """The userspace links' delay line this machine would use (``c`` or ``python``)."""
    from testbed.net import delayhelper

    return delayhelper.resolve("auto").name


def _module(experiment: str) -> Any:
    from experiments.runner import EXPERIMENTS

    return importlib.import_module(EXPERIMENTS[experiment])


def _run_here(task: PointTask, ctx: RunContext) -> tuple[list[dict[str, Any]], float]:
    start = time.monotonic()
    records: list[dict[str, Any]] = _module(task.experiment).run_point(task.point, ctx)
    return records, time.monotonic() - start


def _close_run(experiment: str, ctx: RunContext) -> None:
    """End what an experiment keeps across points (a pooled network, experiments/common.py
    NetworkPool); it describes itself into ``ctx.run_dir`` as it closes."""
    close_run = getattr(_module(experiment), "close_run", None)
    if close_run is not None:
        close_run(ctx)


def run_point_task(task: PointTask, close_run: bool = True) -> PointResult:
    """Run one point on this machine in a scratch directory and hand back all it wrote.

    ``close_run=False`` keeps what the experiment pools (its network) open for the next
    point of the same group in this process (``ConcurrentLocalExecutor``); a point that
    raises closes it all the same."""
    here = code_identity()
    if here != task.code:
        raise ConfigError(f"worker {socket.gethostname()} runs {here}, the driver {task.code}",
                          "install the driver's commit on every worker")
    from experiments.runner import RunContext
    from testbed.net.shaping import choose_backend
    from testbed.workload import default_eno_datapath

    backend = choose_backend(task.link_backend)
    with default_eno_datapath(task.eno_datapath) as datapath, \
            tempfile.TemporaryDirectory(prefix="tcpinc-point-") as tmp:
        worker = {"host": socket.gethostname(), "kernel": platform.release(),
                  "link_backend": backend, "delay_helper": _delay_helper(),
                  "eno_datapath": datapath, "address": _dask_address()}
        scratch = Path(tmp)
        ctx = RunContext(scratch, task.profile, task.repeat, task.seed, backend, datapath)
        # A task is self-contained: nothing of it (a pooled network) outlives it on the
        # worker, so on a cluster each point builds and describes its own network.
        ended = False
        try:
            records, seconds = _run_here(task, ctx)
            ended = True
        finally:
            if close_run or not ended:
                _close_run(task.experiment, ctx)
        appended: dict[str, str] = {}
        files: dict[str, bytes] = {}
        for path in sorted(p for p in scratch.rglob("*") if p.is_file()):
            rel = str(path.relative_to(scratch))
            if path.suffix == ".jsonl":
                appended[rel] = path.read_text()
            else:
                files[rel] = path.read_bytes()
    return PointResult(task.point, records, worker, seconds, appended, files, str(scratch))


def _dask_address() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return "local"


class LocalExecutor:
    """Today's behaviour: points run one after another in this process, into the run dir."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.identity = {"host": socket.gethostname(), "kernel": platform.release(),
                         "link_backend": backend, "delay_helper": _delay_helper(),
                         "address": "local"}

    def workers(self) -> list[dict[str, Any]]:
        return [self.identity]

    def run(self, tasks: list[PointTask], ctx: RunContext) -> Iterator[Outcome]:
        try:
            for task in tasks:
                records, seconds = _run_here(task, ctx)
                worker = {**self.identity, "eno_datapath": ctx.eno_datapath}
                yield PointResult(task.point, records, worker, seconds)
        finally:
            # Consecutive points may share a network; the run (also an interrupted one)
            # ends it here.
            if tasks:
                _close_run(tasks[0].experiment, ctx)

    def close(self) -> None:
        return None


class ConcurrentLocalExecutor:
    """Groups of points at once on this machine, each group in its own worker process.

    For experiments whose points mostly wait (a SYN black hole waits out retransmission
    timeouts) and measure nothing a busy CPU moves (outcomes, round trips counted from
    captures); an experiment opts in with ``CONCURRENCY`` (docs/measurement.md). A point's
    network is its own set of namespaces, so networks built side by side never meet. The
    points of one group (the experiment's ``group_key``, else contiguous chunks) run one
    after another in one process, sharing what the experiment pools (one network); a
    group's results come back when it ends, and the driver alone writes the run directory.
    A point that raises is a ``PointFailure`` (recorded, resumable), as on a cluster."""

    def __init__(self, backend: str, workers: int, group_key: GroupKey | None = None) -> None:
        if workers < 2:
            raise ConfigError(f"a concurrent executor needs 2 or more workers, not {workers}")
        self.backend, self.size, self.group_key = backend, workers, group_key
        self.identity = {**LocalExecutor(backend).identity, "address": "local"}
        self.seen: list[dict[str, Any]] = []

    def workers(self) -> list[dict[str, Any]]:
        return self.seen or [self.identity]

    def groups(self, tasks: list[PointTask]) -> list[list[PointTask]]:
        """Tasks in groups, in the points' order within each group; keyed groups largest
        first (longest-processing-time order: a large group taken last would run on alone
        while the other workers stand idle)."""
        if self.group_key is not None:
            keyed: dict[str, list[PointTask]] = {}
            for task in tasks:
                keyed.setdefault(self.group_key(task.point), []).append(task)
            return sorted(keyed.values(), key=len, reverse=True)
        size = -(-len(tasks) // self.size)  # ceiling: at most ``self.size`` chunks
        return [tasks[i:i + size] for i in range(0, len(tasks), max(size, 1))]

    def run(self, tasks: list[PointTask], ctx: RunContext) -> Iterator[Outcome]:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # The worker uses what the driver resolved (a test's datapath, the run's backend).
        tasks = [dataclasses.replace(t, link_backend=ctx.link_backend,
                                     eno_datapath=ctx.eno_datapath) for t in tasks]
        groups = self.groups(tasks)
        if not groups:
            return
        # Forked: a worker starts with the driver's imports (the experiment, pandas,
        # matplotlib), which a fresh interpreter would pay again on a busy machine.
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=min(self.size, len(groups)), mp_context=context,
                                 initializer=_worker_start, initargs=(os.getpid(),)) as pool:
            futures = [pool.submit(run_point_group, group) for group in groups]
            try:
                for future in as_completed(futures):
                    for outcome in future.result():
                        if isinstance(outcome, PointResult):
                            self._saw(outcome.worker)
                        yield outcome
            finally:
                for future in futures:
                    future.cancel()

    def _saw(self, worker: dict[str, Any]) -> None:
        if worker not in self.seen:
            self.seen.append(worker)

    def close(self) -> None:
        return None


GroupKey = Callable[[dict[str, Any]], str]


def _worker_start(parent: int) -> None:
    """A worker process ends with the driver, even one killed by SIGKILL (its helpers and
    namespaces then go as after any killed run, testbed/net/hosts.py)."""
    from testbed.net.hosts import die_with_parent

    die_with_parent(parent)


def run_point_group(tasks: list[PointTask]) -> list[Outcome]:
    """Run a group of points one after another in this process; the experiment's pooled
    network stays open between them and closes after the last (or a failed) point. Each
    result names this process as its worker (``local:<pid>``)."""
    out: list[Outcome] = []
    for i, task in enumerate(tasks):
        try:
            result = run_point_task(task, close_run=i == len(tasks) - 1)
        except Exception as exc:  # the point failed; the group goes on, as on a cluster
            out.append(PointFailure(task.point, f"{type(exc).__name__}: {exc}", 1,
                                    [f"local:{os.getpid()}"]))
            continue
        result.worker["address"] = f"local:{os.getpid()}"
        out.append(result)
    return out


def make_executor(args: argparse.Namespace, names: list[str]) -> tuple[Executor, str]:
    """The executor the arguments ask for, connected and checked, and the link backend
    the points will use ("mixed" when dask workers resolve different ones)."""
    kind = getattr(args, "executor", "local")
    scheduler, ssh = getattr(args, "scheduler", None), getattr(args, "ssh", None)
    retries = getattr(args, "retries", 2)
    if retries < 0:
        raise ConfigError(f"--retries must be >= 0, got {retries}")
    if kind == "local":
        if scheduler or ssh:
            raise ConfigError("--scheduler and --ssh need --executor dask",
                              "add --executor dask")
        from testbed.net.network import check_prerequisites
        from testbed.net.shaping import choose_backend

        check_prerequisites()
        backend = choose_backend(args.link_backend)
        return LocalExecutor(backend), backend
    if bool(scheduler) == bool(ssh):
        raise ConfigError("--executor dask needs exactly one of --scheduler or --ssh",
                          "give --scheduler tcp://HOST:8786 or --ssh host1,host2")
    from experiments.dask_executor import DaskExecutor, check_address, ssh_hosts
    from experiments.runner import EXPERIMENTS

    if scheduler:
        check_address(scheduler)
    else:
        ssh_hosts(ssh or "")
    executor = DaskExecutor.connect(scheduler, ssh, retries=retries,
                                    timeout_s=getattr(args, "connect_timeout", 10.0))
    modules = [importlib.import_module(EXPERIMENTS[n]) for n in names]
    try:
        executor.check(names, args.link_backend,
                       needs_root=any(getattr(m, "NEEDS_ROOT", True) for m in modules),
                       eno_datapath=getattr(args, "eno_datapath", None) or "auto")
    except BaseException:
        executor.close()
        raise
    backends = {str(w["link_backend"]) for w in executor.workers()}
    return executor, backends.pop() if len(backends) == 1 else "mixed"


def relocate(result: PointResult, run_dir: Path) -> None:
    """Paths a worker put in records (pcaps) name the run directory, as in a local run."""
    if not result.scratch:
        return
    prefix = result.scratch.rstrip("/") + "/"
    for record in result.records:
        for key, value in record.items():
            if isinstance(value, str) and value.startswith(prefix):
                record[key] = str(run_dir / value[len(prefix):])
    for name, text in result.appended.items():
        result.appended[name] = text.replace(prefix, str(run_dir) + "/")
