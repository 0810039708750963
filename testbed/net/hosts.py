"""Emulated hosts: one network (and mount) namespace each, held by an idle process.

Each host's namespaces are made as ``mnexec -n`` makes them (Mininet's small exec helper):
unshare a network and a mount namespace, mark / private, mount a sysfs that shows the host's
own interfaces. The holder of a host is the process whose ``/proc/<pid>/ns/net`` is its
namespace; its pid is the host's. Processes run in a host through ``mnexec -da <pid>`` (attach
to that pid's network and mount namespaces, no fork: the Popen's pid is the command's), as
Mininet's own hosts do, so applications, captures and helpers see the same environment; but
there is no interactive shell per host and no round trip per command.

Holders: the compiled testbed/net/nshold_c/tcpinc-nshold (built by ``make setup``) forks every
host of a network from one exec; without it each host is one ``mnexec -cdn sleep infinity``
(the same namespaces, one fork+exec of this large process per host: ~20x slower to start a
few hundred hosts). Either way the holders get SIGKILL when the creating process dies (prctl
PR_SET_PDEATHSIG), so a killed run leaves no namespace behind; `tcpinc clean`
(testbed/net/state.py) handles the rest.
"""

from __future__ import annotations

import ctypes
import functools
import os
import select
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from testbed.errors import CommandError, KernelFeatureError, present

PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Resolved once in the parent: the child between fork and exec only calls it (no dlopen there).
_LIBC = ctypes.CDLL(None, use_errno=True)
HOLDER = ["mnexec", "-cdn", "sleep", "infinity"]
LAUNCHER = Path(__file__).resolve().parent / "nshold_c" / "tcpinc-nshold"
READY_TIMEOUT = 10.0


def wait_exit(proc: subprocess.Popen[Any], timeout: float) -> int:
    """``proc.wait(timeout)`` that returns as soon as the process has exited: Popen's own
    timed wait polls with sleeps that grow to 50 ms, which each of an experiment point's
    processes (server, captures, short commands) paid again when it stopped. A pidfd
    (Linux 5.3) becomes readable at the exit; raises subprocess.TimeoutExpired as Popen
    does."""
    if proc.poll() is not None:
        return int(proc.returncode)
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:  # no pidfd here (or the pid just went): Popen's own wait
        return proc.wait(timeout)
    try:
        ready, _, _ = select.select([pidfd], [], [], max(0.0, timeout))
    finally:
        os.close(pidfd)
    if not ready:
        raise subprocess.TimeoutExpired(proc.args, timeout)
    return proc.wait()


def die_with_parent(parent: int, sig: int = signal.SIGTERM) -> None:
    """In a child between fork and exec: SIGTERM when this process dies, even by SIGKILL.

    Helpers (delay lines, hooks, servers, boxes) then stop on their own after a killed run
    instead of holding its namespaces until `tcpinc clean` (prctl(2) PR_SET_PDEATHSIG; it
    survives the setns and exec of mnexec). A parent already gone before the prctl is caught
    by comparing the parent pid.
    """
    if _LIBC.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        os._exit(1)


class NsHost:
    """One host: ``popen`` and ``cmd`` run inside its namespaces (Mininet's Host interface)."""

    def __init__(self, name: str, pid: int) -> None:
        self.name = name
        self.pid = pid

    def __repr__(self) -> str:
        return f"<NsHost {self.name} pid={self.pid}>"

    def popen(self, argv: list[str], /, **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in the host. Only the main thread asks for a parent-death signal:
        the kernel sends it when the creating THREAD exits."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        if threading.current_thread() is threading.main_thread():
            kwargs.setdefault("preexec_fn",
                              functools.partial(die_with_parent, os.getpid(), signal.SIGKILL))
        return subprocess.Popen(["mnexec", "-da", str(self.pid), *argv], **kwargs)

    def cmd(self, text: str, timeout: float = 30.0) -> str:
        """Run a shell command line in the host; its output (stdout and stderr). Like
        Mininet's ``cmd``, a command put in the background (``&``) does not hold it up: the
        output goes through a file, not a pipe the background process would keep open."""
        with tempfile.TemporaryFile() as out:
            proc = self.popen(["sh", "-c", text], stdin=subprocess.DEVNULL, stdout=out,
                              stderr=subprocess.STDOUT)
            try:
                wait_exit(proc, timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise CommandError(["sh", "-c", text], -1, f"timed out after {timeout}s",
                                   self.name) from None
            out.seek(0)
            return out.read().decode(errors="replace")

    def execute(self, argv: list[str], stdin: str = "", timeout: float = 30.0) -> str:
        """Run ``argv`` in the host with ``stdin``; its stdout, CommandError on failure."""
        proc = self.popen(argv, stdin=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise CommandError(argv, -1, f"timed out after {timeout}s {err}", self.name) from None
        if proc.returncode != 0:
            raise CommandError(argv, proc.returncode, err.strip() or out[-400:], self.name)
        return str(out)


def _ready(pid: int) -> bool:
    """mnexec has made the namespaces and exec'd the holder (its comm is now ``sleep``)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "sleep"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _main_thread_tie() -> bool:
    """The kernel sends the death signal when the creating THREAD exits: only the main
    thread, which lives as long as this process, asks for it (a network built in a worker
    thread is torn down by its own stop())."""
    return threading.current_thread() is threading.main_thread()


class HostSet:
    """The holders of one network's hosts; ``nodes`` maps host name -> NsHost."""

    def __init__(self) -> None:
        self.nodes: dict[str, NsHost] = {}
        self.launcher: subprocess.Popen[str] | None = None  # tcpinc-nshold, when used
        self.launcher_argv: list[str] = []
        self.holders: list[subprocess.Popen[bytes]] = []  # one mnexec each, otherwise

    def stop(self) -> None:
        """Kill every holder and reap it: when this returns the namespaces are gone."""
        if self.launcher is not None:
            if self.launcher.poll() is None:
                self.launcher.terminate()  # it SIGKILLs and reaps every host, then exits
                try:
                    wait_exit(self.launcher, 10)
                except subprocess.TimeoutExpired:
                    self.launcher.kill()  # its hosts get SIGKILL by their death signal
                    self.launcher.wait()
            for stream in (self.launcher.stdout, self.launcher.stderr):
                if stream:
                    stream.close()
        for holder in self.holders:
            if holder.poll() is None:
                holder.kill()
        for holder in self.holders:
            holder.wait()
            if holder.stderr:
                holder.stderr.close()


def spawn_hosts(names: list[str], launcher: Path = LAUNCHER) -> HostSet:
    """Hosts for ``names``, returned once every one holds its namespaces.

    Raises KernelFeatureError (after killing what it started) when a holder fails or is not
    ready within READY_TIMEOUT seconds.
    """
    hosts = HostSet()
    try:
        if launcher.is_file() and os.access(launcher, os.X_OK):
            _spawn_launched(hosts, names, launcher)
        else:
            _spawn_mnexec(hosts, names)
    except BaseException:
        hosts.stop()
        raise
    return hosts


def _spawn_launched(hosts: HostSet, names: list[str], launcher: Path) -> None:
    argv = [str(launcher), *(["--die-with-parent"] if _main_thread_tie() else []),
            str(len(names))]
    hosts.launcher_argv = argv
    proc = hosts.launcher = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                             text=True)
    stdout = present(proc.stdout, "the host launcher's stdout pipe")
    lines: list[str] = []
    deadline = time.monotonic() + READY_TIMEOUT
    # Every child closes its copy of stdout after its line, the launcher after forking them.
    while len(lines) < len(names):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([stdout], [], [], remaining)[0]:
            raise KernelFeatureError(f"{len(names) - len(lines)} host(s) not up after "
                                     f"{READY_TIMEOUT:.0f}s", "the machine is overloaded?")
        line = stdout.readline()
        if not line:
            break
        lines.append(line.strip())
    bad = [line for line in lines if not line.isdigit()]
    if bad or len(lines) < len(names):
        err = proc.stderr.read().strip() if proc.stderr and proc.poll() is not None else ""
        raise KernelFeatureError(f"cannot make host namespaces: {(bad or [err])[0]}",
                                 "network namespaces need root (CAP_SYS_ADMIN)")
    for name, pid in zip(names, lines, strict=True):
        hosts.nodes[name] = NsHost(name, int(pid))


def _spawn_mnexec(hosts: HostSet, names: list[str]) -> None:
    preexec = (functools.partial(die_with_parent, os.getpid(), signal.SIGKILL)
               if _main_thread_tie() else None)
    for name in names:
        holder = subprocess.Popen(HOLDER, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, preexec_fn=preexec)
        hosts.holders.append(holder)
        hosts.nodes[name] = NsHost(name, holder.pid)
    waiting = list(hosts.holders)
    deadline = time.monotonic() + READY_TIMEOUT
    while waiting:
        waiting = [h for h in waiting if not _ready(h.pid)]
        for holder in waiting:
            if holder.poll() is not None:
                err = holder.stderr.read().decode().strip() if holder.stderr else ""
                raise KernelFeatureError(f"mnexec exited ({holder.returncode}): {err}",
                                         "network namespaces need root and mnexec")
        if waiting and time.monotonic() > deadline:
            raise KernelFeatureError(f"{len(waiting)} host(s) not up after "
                                     f"{READY_TIMEOUT:.0f}s", "the machine is overloaded?")
        if waiting:
            time.sleep(0.002)
