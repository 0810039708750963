"""Loading eno.bpf.c per emulated host: cgroup v2 directory, pinned program and maps.

Programs attach per cgroup, not per network namespace, so every ENO host of a network
gets its own cgroup v2 directory ``<cgroup2 mount>/tcpinc-eno-<network>-<host>`` and the
processes the testbed starts in that host are placed in it (``Network.popen``). The
object is compiled once by ``make setup``; here it is only loaded and attached with
bpftool (no compiler at run time). Each host gets its own program instance and maps,
pinned under ``/sys/fs/bpf/<same name>``, which is how a stream finds them
(testbed/eno/bpf/datapath.py), through the map ids it writes in ``MAP_IDS``.

Teardown (and ``tcpinc clean`` after a killed run) detaches the program, unlinks the pins
and removes the cgroup; the names are recorded in the network's state file first, so a
crash at any point leaves nothing ``clean`` cannot find.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from testbed.eno.bpf.datapath import BPF_FS, CGROUP_PREFIX, MAP_IDS
from testbed.errors import ConfigError, KernelFeatureError
from testbed.log import LOG

OBJECT = Path(__file__).with_name("eno.bpf.o")
FIX = "use --eno-datapath nfqueue"
PROBE_PREFIX = f"{CGROUP_PREFIX}-probe-"  # + pid: support_problem's scratch pins
BPFTOOL_TIMEOUT = 30.0


def cgroup2_mount() -> Path | None:
    """Where cgroup v2 is mounted (hybrid hosts: /sys/fs/cgroup/unified), or None."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        pre, _, post = line.partition(" - ")
        if post.split(" ", 1)[0] == "cgroup2":
            return Path(pre.split()[4])
    return None


def _bpffs_mounted() -> bool:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        if post.split(" ", 1)[0] == "bpf" and Path(pre.split()[4]) == BPF_FS:
            return True
    return False


def _bpftool(argv: list[str]) -> None:
    proc = subprocess.run(["bpftool", *argv], capture_output=True, text=True,
                          timeout=BPFTOOL_TIMEOUT, check=False)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        why = next((ln for ln in lines if ln.startswith(("Error", "libbpf: prog"))), "")
        raise KernelFeatureError(f"bpftool {argv[0]} {argv[1]} failed: "
                                 f"{why or (lines[-1] if lines else proc.returncode)}", FIX)


_PREREQUISITES = threading.Lock()  # hosts attach side by side: one bpffs mount


def _prerequisites() -> None:
    if shutil.which("bpftool") is None:
        raise KernelFeatureError("bpftool is missing for the bpf ENO datapath",
                                 f"run `make setup`, or {FIX}")
    if not OBJECT.exists():
        raise KernelFeatureError(f"{OBJECT.name} is not built",
                                 f"run `make setup` (clang compiles it), or {FIX}")
    if cgroup2_mount() is None:
        raise KernelFeatureError("no cgroup v2 mount for the bpf ENO datapath", FIX)
    with _PREREQUISITES:
        if _bpffs_mounted():
            return
        BPF_FS.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["mount", "-t", "bpf", "bpf", str(BPF_FS)], capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            raise KernelFeatureError(f"cannot mount bpffs on {BPF_FS}: {proc.stderr.strip()}",
                                     FIX)


@functools.cache
def support_problem() -> str | None:
    """Why this machine cannot run the bpf datapath (one line), or None. Loads the program
    once into a scratch pin directory: the verifier accepts it only on a kernel with TCP
    header-option callbacks and helpers (Linux 5.10+), bpf_loop (5.17+) and SK_STORAGE."""
    try:
        _prerequisites()
        scratch = Path(tempfile.mkdtemp(prefix=f"{PROBE_PREFIX}{os.getpid()}-", dir=BPF_FS))
        try:
            _bpftool(["prog", "load", str(OBJECT), str(scratch / "prog"), "type", "sockops",
                      "pinmaps", str(scratch)])
        finally:
            _remove_pins(scratch)
    except KernelFeatureError as exc:
        return str(exc)
    except OSError as exc:
        return f"bpf datapath probe failed: {exc}"
    return None


def sweep_probes() -> int:
    """Remove scratch pins of support probes whose process is gone (a run killed while it
    probed); returns how many."""
    removed = 0
    if not BPF_FS.is_dir():
        return removed
    for pins in BPF_FS.glob(f"{PROBE_PREFIX}*"):
        pid = pins.name[len(PROBE_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _remove_pins(pins)
            removed += 1
    return removed


def _remove_pins(pins: Path) -> None:
    if not pins.exists():
        return
    for entry in pins.iterdir():
        entry.unlink()
    pins.rmdir()


@dataclass
class HostAttachment:
    """One host's cgroup and pinned program (see the module docstring)."""

    name: str
    cgroup: Path
    pins: Path
    _fd: int | None = None

    def members(self) -> list[int]:
        """The pids in the cgroup now (none once it is gone)."""
        try:
            return [int(pid) for pid in self.procs_file.read_text().split()]
        except FileNotFoundError:
            return []

    def procs_fd(self) -> int:
        """A write fd on the cgroup's cgroup.procs (kept open until ``remove``)."""
        if self._fd is None:
            self._fd = os.open(self.procs_file, os.O_WRONLY | os.O_CLOEXEC)
        return self._fd

    @classmethod
    def for_host(cls, network_id: str, host: str) -> HostAttachment:
        root = cgroup2_mount()
        if root is None:
            raise KernelFeatureError("no cgroup v2 mount for the bpf ENO datapath", FIX)
        name = f"{CGROUP_PREFIX}-{network_id}-{host}"
        return cls(name=name, cgroup=root / name, pins=BPF_FS / name)

    @property
    def procs_file(self) -> Path:
        return self.cgroup / "cgroup.procs"

    def attach(self) -> None:
        """Create, load, attach; on any failure undo what was done and raise."""
        _prerequisites()
        try:
            self.cgroup.mkdir()
            self.pins.mkdir()
            _bpftool(["prog", "load", str(OBJECT), str(self.pins / "prog"), "type", "sockops",
                      "pinmaps", str(self.pins)])
            _bpftool(["cgroup", "attach", str(self.cgroup), "sock_ops", "pinned",
                      str(self.pins / "prog")])
            ids = {name: _map_id(self.pins / name)
                   for name in ("eno_sk", "eno_listen", "eno_answers")}
            MAP_IDS.mkdir(parents=True, exist_ok=True)
            ids_file(self.cgroup).write_text(json.dumps(ids))
        except BaseException:
            self.remove()
            raise
        LOG.info("bpf ENO datapath attached to %s", self.cgroup)

    def remove(self) -> list[str]:
        """Detach, unpin, rmdir; returns what could not be removed (nothing, normally)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        return remove(self.cgroup, self.pins)


def ids_file(cgroup: Path) -> Path:
    return MAP_IDS / f"{cgroup.name}.json"


def _map_id(pin: Path) -> int:
    proc = subprocess.run(["bpftool", "-j", "map", "show", "pinned", str(pin)],
                          capture_output=True, text=True, timeout=BPFTOOL_TIMEOUT, check=False)
    if proc.returncode != 0:
        raise KernelFeatureError(f"bpftool map show {pin.name} failed: {proc.stderr.strip()}",
                                 FIX)
    return int(json.loads(proc.stdout)["id"])


def remove(cgroup: Path, pins: Path) -> list[str]:
    """Undo one attachment; safe to call on a half-built or already removed one."""
    left: list[str] = []
    ids_file(cgroup).unlink(missing_ok=True)
    prog = pins / "prog"
    if cgroup.exists() and prog.exists():
        # A cgroup that goes away releases its programs anyway; the detach makes the order
        # explicit and lets a cgroup that still holds a process keep running unhooked.
        try:
            _bpftool(["cgroup", "detach", str(cgroup), "sock_ops", "pinned", str(prog)])
        except (KernelFeatureError, OSError) as exc:
            LOG.warning("detaching the ENO program from %s: %s", cgroup, exc)
    try:
        _remove_pins(pins)
    except OSError as exc:
        left.append(f"{pins}: {exc}")
    if cgroup.exists():
        try:
            cgroup.rmdir()
        except OSError as exc:  # EBUSY: a process still lives in it
            left.append(f"{cgroup}: {exc}")
    return left


DATAPATHS = ("auto", "bpf", "nfqueue")


def resolve(requested: str, notice: bool = True) -> str:
    """``--eno-datapath``: ``bpf`` or ``nfqueue`` as asked (bpf raises KernelFeatureError
    where it cannot run), ``auto``: bpf where the kernel takes the program, else nfqueue
    with a one-line notice on stderr."""
    if requested not in DATAPATHS:
        raise ConfigError(f"unknown ENO datapath {requested!r}",
                          f"choose from {', '.join(DATAPATHS)}")
    if requested == "nfqueue":
        return requested
    problem = support_problem()
    if problem is None:
        return "bpf"
    if requested == "bpf":
        raise KernelFeatureError(f"bpf ENO datapath unavailable: {problem}", FIX)
    if notice:
        print(f"notice: bpf ENO datapath unavailable ({problem}); using nfqueue",
              file=sys.stderr)
    return "nfqueue"
