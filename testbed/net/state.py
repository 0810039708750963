"""What a running network leaves on the machine, recorded so `tcpinc clean` can undo a crash.

Each running ``Network`` writes one JSON file in ``STATE_DIR`` naming its owner
process, every namespace it created (by the pid of the process holding it and
the namespace inode) and every helper process it started (pid plus kernel start
time, so a recycled pid is never killed). Cleaning works by pid, never by
process name: processes are killed only when their pid still has the recorded
start time, or when they live inside a recorded namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.log import LOG

STATE_DIR = Path(os.environ.get("TCPINC_STATE_DIR", "/run/tcpinc"))


def proc_start_time(pid: int) -> int | None:
    """Kernel start time (clock ticks since boot) of ``pid``, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # Field 22; the command name (field 2) may contain spaces, so split after ')'.
    return int(stat.rsplit(")", 1)[1].split()[19])


def netns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def same_process(pid: int, start: int | None) -> bool:
    return start is not None and proc_start_time(pid) == start


def pids_in_netns(inode: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and netns_inode(int(entry.name)) == inode:
            out.append(int(entry.name))
    return out


@dataclass
class NetworkState:
    """The on-disk record of one running network."""

    path: Path
    owner_pid: int = field(default_factory=os.getpid)
    owner_start: int | None = None
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    procs: list[dict[str, Any]] = field(default_factory=list)
    interfaces: list[str] = field(default_factory=list)
    workdir: str | None = None  # the network's own temporary directory, removed by clean
    # bpf ENO datapath: {"cgroup": path, "pins": path} per host (testbed/eno/bpf/attach.py)
    bpf: list[dict[str, str]] = field(default_factory=list)
    _deferred: int = field(default=0, repr=False)  # > 0: inside deferred(), saved at its end

    @classmethod
    def create(cls, workdir: Path | None = None) -> NetworkState:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        path = STATE_DIR / f"net-{os.getpid()}-{time.monotonic_ns()}.json"
        state = cls(path=path, owner_start=proc_start_time(os.getpid()),
                    workdir=str(workdir) if workdir else None)
        state.save()
        return state

    @classmethod
    def load(cls, path: Path) -> NetworkState:
        data = json.loads(path.read_text())
        return cls(path=path, **data)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Record many hosts or processes with one write at the end (also on an exception).

        Rewriting the file per entry made a few hundred entries cost seconds. Whatever starts
        inside the block dies with this process anyway (parent-death signals), so a crash
        before the write leaves nothing the file would have been needed for.
        """
        self._deferred += 1
        try:
            yield
        finally:
            self._deferred -= 1
            self.save()

    def save(self) -> None:
        if self._deferred:
            return
        data = {
            "owner_pid": self.owner_pid,
            "owner_start": self.owner_start,
            "nodes": self.nodes,
            "procs": self.procs,
            "interfaces": self.interfaces,
            "workdir": self.workdir,
            "bpf": self.bpf,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.rename(self.path)

    def add_node(self, name: str, pid: int) -> None:
        self.nodes[name] = {
            "pid": pid,
            "start": proc_start_time(pid),
            "netns": netns_inode(pid),
        }
        self.save()

    def add_proc(self, pid: int, node: str, argv: list[str]) -> None:
        self.procs.append(
            {"pid": pid, "start": proc_start_time(pid), "node": node, "argv": argv[:6]}
        )
        self.save()

    def add_bpf(self, cgroup: Path, pins: Path) -> None:
        self.bpf.append({"cgroup": str(cgroup), "pins": str(pins)})
        self.save()

    @property
    def network_id(self) -> str:
        """Unique among the networks on this machine (the state file's name)."""
        return self.path.stem.removeprefix("net-")

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    @property
    def owner_alive(self) -> bool:
        return same_process(self.owner_pid, self.owner_start)


def _kill(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def _kill_and_wait(pids: list[int], timeout: float = 2.0) -> None:
    for pid in pids:
        _kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(proc_start_time(p) for p in pids):
        time.sleep(0.02)
    for pid in pids:
        if proc_start_time(pid) is not None:
            _kill(pid, signal.SIGKILL)


def clean_state(state: NetworkState, protected: frozenset[int] = frozenset()) -> dict[str, Any]:
    """Kill what one recorded network left: its processes, then everything in its namespaces.

    A namespace inode is only a name while the namespace exists: once a dead run's
    namespaces are gone the kernel hands their inode numbers to new namespaces. Inodes in
    ``protected`` (the namespaces of networks whose owner is alive) are therefore never
    swept, so cleaning one dead run cannot take a running network's hosts.
    """
    report: dict[str, Any] = {"state": str(state.path), "processes": 0, "namespaces": 0}
    procs = [p["pid"] for p in state.procs if same_process(p["pid"], p["start"])]
    _kill_and_wait(procs)
    report["processes"] += len(procs)
    for node in state.nodes.values():
        inode = node.get("netns")
        if not inode or inode == netns_inode(1):
            continue  # never touch the root namespace
        if inode in protected:
            LOG.info("namespace %s now belongs to a running network; not touched", inode)
            report.setdefault("reused_namespaces", []).append(inode)
            continue
        members = pids_in_netns(inode)
        if members:
            LOG.info("killing %d process(es) in namespace %s", len(members), inode)
            _kill_and_wait(members)
            report["processes"] += len(members)
            report["namespaces"] += 1
    report["workdir"] = _remove_workdir(state.workdir)
    if state.bpf:
        report["bpf_cgroups"] = clean_bpf(state)
    state.remove()
    return report


def _remove_workdir(workdir: str | None) -> str | None:
    """Remove a network's temporary directory; only ever one named like those we make."""
    if not workdir:
        return None
    path = Path(workdir)
    if not path.name.startswith("tcpinc-net-") or path.parent != Path(tempfile.gettempdir()):
        LOG.warning("not removing %s: not a network work directory", path)
        return None
    shutil.rmtree(path, ignore_errors=True)
    return str(path)


def clean_bpf(state: NetworkState) -> int:
    """Detach, unpin and remove the bpf ENO datapath's cgroups of one recorded network."""
    from testbed.eno.bpf.attach import remove  # only networks that used the bpf datapath

    for entry in state.bpf:
        for problem in remove(Path(entry["cgroup"]), Path(entry["pins"])):
            LOG.warning("bpf ENO datapath left behind: %s", problem)
    return len(state.bpf)


def clean_all(force: bool = False) -> list[dict[str, Any]]:
    """Clean every recorded network whose owner is gone (or all of them with ``force``)."""
    from testbed.eno.bpf.attach import sweep_probes

    reports: list[dict[str, Any]] = []
    probes = sweep_probes()  # bpf datapath probes of runs killed while they probed
    if probes:
        reports.append({"bpf_probe_pins": probes})
    if not STATE_DIR.is_dir():
        return reports
    states: list[NetworkState] = []
    for path in sorted(STATE_DIR.glob("net-*.json")):
        try:
            states.append(NetworkState.load(path))
        except (json.JSONDecodeError, TypeError) as exc:
            LOG.warning("unreadable state file %s (%s); removing it", path, exc)
            path.unlink(missing_ok=True)
    alive = [s.owner_alive for s in states]
    protected = frozenset() if force else live_namespaces(
        [s for s, up in zip(states, alive, strict=True) if up])
    for state, up in zip(states, alive, strict=True):
        if up and not force:
            reports.append({"state": str(state.path), "skipped": "owner process still running"})
            continue
        reports.append(clean_state(state, protected))
    return reports


def live_namespaces(states: list[NetworkState]) -> frozenset[int]:
    """Namespace inodes of the nodes of ``states`` whose holding process is still that node."""
    return frozenset(
        node["netns"] for state in states for node in state.nodes.values()
        if node.get("netns") and same_process(node["pid"], node.get("start"))
    )
