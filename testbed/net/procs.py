"""Processes a network runs inside its hosts: one-shot commands, helpers, teardown by pid.

``HostProcesses`` is the part of ``Network`` (testbed/net/network.py) that starts processes in
hosts and ends them: every process is recorded in the network's state file (for `tcpinc
clean`), gets a parent-death signal when started from the main thread, joins the host's bpf
cgroup when it has one, and is stopped by pid at teardown (helpers by SIGTERM, then SIGKILL;
one-shot commands still running are killed).
"""

from __future__ import annotations

import functools
import os
import select
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any

from testbed.eno.bpf.attach import HostAttachment
from testbed.errors import CommandError, ProcessDiedError, present
from testbed.log import LOG
from testbed.net.hosts import NsHost, die_with_parent, wait_exit
from testbed.net.state import NetworkState


@dataclass
class Helper:
    """A process the network started inside a host, stopped by pid at teardown."""

    node: str
    name: str
    proc: subprocess.Popen[str]
    essential: bool = True
    stopping: bool = False  # SIGTERM already sent by stop(): an exit now is not a death


class HostProcesses:
    """Process bookkeeping of a network; ``Network`` fills ``nodes`` and ``state``."""

    def __init__(self) -> None:
        self.nodes: dict[str, NsHost] = {}
        self.state: NetworkState | None = None
        self.helpers: list[Helper] = []
        # Every process started in a host: one-shot commands too, so that one abandoned by an
        # exception (an interrupted run, a timeout above it) is killed at teardown.
        self._procs: list[subprocess.Popen[str]] = []
        # bpf ENO datapath: host -> its cgroup and pinned program (testbed/eno/bpf/attach.py);
        # hosts whose datapath is turned off keep theirs, unused (Network.set_eno_bpf_hosts)
        self.eno_bpf: dict[str, HostAttachment] = {}
        self.eno_bpf_off: set[str] = set()

    def _stop_helpers(self) -> list[str]:
        """Applications and middleboxes first, newest first; then every delay line at once
        (signalled together, then waited for: they are independent). Returns the deaths."""
        errors: list[str] = []
        lines = [h for h in self.helpers if h.name.startswith("delayline:")]
        for helper in reversed(self.helpers):
            if helper in lines:
                continue
            died = self._stop_helper(helper)
            if died:
                errors.append(died)
        for helper in lines:
            if helper.proc.poll() is None:
                helper.proc.send_signal(signal.SIGTERM)
                helper.stopping = True
        for helper in lines:
            died = self._stop_helper(helper)
            if died:
                errors.append(died)
        self.helpers.clear()
        self._kill_leftovers()
        return errors

    def _kill_leftovers(self) -> None:
        """Kill processes started with ``popen`` that still run (nobody waits for them now)."""
        for proc in self._procs:
            if proc.poll() is None:
                LOG.warning("killing pid %d left running at teardown: %s", proc.pid, proc.args)
                proc.kill()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    LOG.error("pid %d did not die on SIGKILL", proc.pid)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream:
                    stream.close()
        self._procs.clear()

    def _in_host(self, node: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Popen arguments that start a process of ``node`` in the host's cgroup, if it has
        one and its datapath is on: the child joins it before it execs (so no socket of it
        is ever made outside), through an fd opened here (the host's mount namespace has no
        cgroup2 mount)."""
        attachment = self.eno_bpf.get(node)
        if attachment is None or node in self.eno_bpf_off:
            return kwargs
        fd = attachment.procs_fd()
        previous = kwargs.get("preexec_fn")

        def join() -> None:  # runs in the child between fork and exec: no locks, no I/O
            os.write(fd, b"0")  # "0": the writing process (cgroup v2 cgroup.procs)
            if previous is not None:
                previous()

        return {**kwargs, "preexec_fn": join}

    def popen(self, node: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        """Start ``argv`` inside ``node``; the process is recorded for `tcpinc clean`."""
        LOG.info("[%s] start %s", node, shlex.join(argv))
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        if threading.current_thread() is threading.main_thread():
            # The kernel sends the death signal when the creating THREAD exits, so only the
            # main thread (which lives as long as this process) asks for it.
            kwargs.setdefault("preexec_fn", functools.partial(die_with_parent, os.getpid()))
        proc: subprocess.Popen[str] = self.nodes[node].popen(argv, **self._in_host(node, kwargs))
        self._procs = [p for p in self._procs if p.poll() is None]
        self._procs.append(proc)
        if self.state is not None:
            self.state.add_proc(proc.pid, node, argv)
        return proc

    def start_helper(
        self, node: str, name: str, argv: list[str], ready: str | None = None,
        timeout: float = 10.0, essential: bool = True, **kwargs: Any,
    ) -> subprocess.Popen[str]:
        """Start a long-running helper; with ``ready``, wait for that line on its stdout."""
        proc = self.popen(node, argv, **kwargs)
        helper = Helper(node, name, proc, essential)
        self.helpers.append(helper)
        if ready is not None:
            wait_for_line(proc, ready, timeout, f"{name} in {node}")
        return proc

    def stop_helper(self, proc: subprocess.Popen[str]) -> None:
        """Stop one helper now; raise ProcessDiedError if it had already died."""
        for helper in self.helpers:
            if helper.proc is proc:
                self.helpers.remove(helper)
                died = self._stop_helper(helper)
                if died:
                    raise ProcessDiedError(died)
                return
        raise ValueError(f"pid {proc.pid} is not a helper of this network")

    def _stop_helper(self, helper: Helper) -> str | None:
        proc = helper.proc
        died = proc.poll() is not None and helper.essential and not helper.stopping
        message = None
        if died:
            err = proc.stderr.read() if proc.stderr else ""
            message = f"{helper.name} in {helper.node} exited early ({proc.returncode}): " + (
                err.strip().splitlines()[-1] if err.strip() else "no output"
            )
        else:
            if not helper.stopping:
                proc.send_signal(signal.SIGTERM)
            try:
                wait_exit(proc, 5)
            except subprocess.TimeoutExpired:
                LOG.warning("%s did not stop on SIGTERM; killing pid %d", helper.name, proc.pid)
                proc.kill()
                proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream and not stream.closed:
                stream.close()
        return message

    def check(self) -> None:
        """Raise if an essential helper (delay line, middlebox) has died."""
        for helper in self.helpers:
            if helper.essential and helper.proc.poll() is not None:
                raise ProcessDiedError(
                    f"{helper.name} in {helper.node} exited ({helper.proc.returncode})"
                )

    def run(self, node: str, argv: list[str], timeout: float = 30.0) -> str:
        """Run ``argv`` in ``node``, logged first; raise CommandError on failure."""
        LOG.debug("[%s] %s", node, shlex.join(argv))
        proc = self.nodes[node].popen(argv, **self._in_host(node, {
            "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}))
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise CommandError(argv, -1, f"timed out after {timeout}s {err}", node) from None
        if proc.returncode != 0:
            # Some tools (iperf3 -J) report their errors on stdout.
            raise CommandError(argv, proc.returncode, err.strip() or str(out)[-400:], node)
        return str(out)


def wait_for_line(proc: subprocess.Popen[str], expected: str, timeout: float, what: str) -> None:
    """Block until ``proc`` prints ``expected`` on stdout; raise with its stderr otherwise."""
    stdout = present(proc.stdout, f"{what}'s stdout pipe")
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            proc.kill()
            raise ProcessDiedError(f"{what} not ready after {timeout:.0f}s")
        readable, _, _ = select.select([stdout], [], [], remaining)
        if not readable:
            continue
        line = stdout.readline()
        if line.strip() == expected:
            return
        if line == "":
            proc.wait()
            err = proc.stderr.read().strip() if proc.stderr else ""
            raise ProcessDiedError(f"{what} exited ({proc.returncode}) before ready: {err}")
