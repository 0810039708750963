"""Packet capture with tcpdump inside a Mininet host, stopped for sure, drops never hidden.

Theory of operation
-------------------
``tcpdump_command`` builds the command line and runs nothing, so it is unit-testable without
root (commands are built apart from running them). ``Capture`` runs it through the host's
``popen`` (Mininet's ``Node.popen`` prefixes ``mnexec -da <pid>``, so tcpdump runs in that
host's network namespace) and is a context manager:

- ``start()`` logs the command line, starts tcpdump and waits, bounded, for its
  "listening on" line on stderr. tcpdump prints it after the capture socket is bound, so
  packets sent after ``start()`` returns are in the ring. No line in time: ``CaptureError``
  with the command line and stderr, and the process is ended.
- ``stop()`` waits ``settle`` seconds, then sends SIGINT: tcpdump then stops reading, closes
  the file and prints "N packets captured / received by filter / dropped by kernel". If it
  does not exit in time it gets SIGTERM, then SIGKILL, by pid. The counters are parsed into
  ``CaptureStats``; drops are a field and a warning, never silent. Without counters (killed)
  ``stop()`` raises, because the pcap can then not be trusted.
- ``__exit__`` always stops. If the body raised, that exception stays the primary one and a
  failure to stop is attached to it as a note.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any, Protocol

from testbed.errors import TestbedError, present
from testbed.net.hosts import wait_exit

log = logging.getLogger(__name__)

_LISTENING = "listening on "
_STAT_RE = {
    "captured": re.compile(r"^(\d+) packets? captured$", re.M),
    "received": re.compile(r"^(\d+) packets? received by filter$", re.M),
    "dropped_by_kernel": re.compile(r"^(\d+) packets? dropped by kernel$", re.M),
    # Printed only when the interface reports drops (tcpdump 4.99 print_stats).
    "dropped_by_interface": re.compile(r"^(\d+) packets? dropped by interface$", re.M),
}


class CaptureError(TestbedError):
    """tcpdump failed to start, died, or did not report its counters."""


class PopenHost(Protocol):
    """What Capture needs from a host: Mininet's ``Node.popen`` has this shape."""

    def popen(self, args: list[str], /, **kwargs: Any) -> subprocess.Popen[bytes]: ...


@dataclass(frozen=True, slots=True)
class CaptureStats:
    """tcpdump's counters at exit. ``dropped`` > 0 means the pcap is missing packets."""

    captured: int
    received: int
    dropped_by_kernel: int
    dropped_by_interface: int = 0

    @property
    def dropped(self) -> int:
        return self.dropped_by_kernel + self.dropped_by_interface

    @property
    def complete(self) -> bool:
        """No packet that matched the filter was lost on the way to the file."""
        return self.dropped == 0


def tcpdump_command(
    intf: str,
    path: str | os.PathLike[str],
    *,
    snaplen: int = 0,
    bpf_filter: str | None = None,
    buffer_kib: int = 8192,
    nano: bool = False,
    user: str | None = "root",
    executable: str = "tcpdump",
) -> list[str]:
    """The tcpdump argv that writes ``intf`` to the pcap ``path``; snaplen 0 means full packets.

    ``--immediate-mode``: libpcap then hands over each packet at once instead of holding it
    in a TPACKET_V3 block until a timeout, so the last handshake packets are in the file
    when we stop. ``-U`` writes each packet to the file as it is saved. ``-Z root``: Debian's
    tcpdump otherwise switches to user tcpdump and the file's owner differs from the run
    directory's. ``nano`` writes nanosecond timestamps (pcap magic 0xa1b23c4d).
    """
    if snaplen < 0:
        raise ValueError(f"snaplen must be >= 0, got {snaplen}")
    if buffer_kib <= 0:
        raise ValueError(f"buffer_kib must be > 0, got {buffer_kib}")
    if not intf or intf.startswith("-"):
        raise ValueError(f"bad interface name {intf!r}")
    cmd = [executable, "-i", intf, "-w", os.fspath(path), "-U", "-n", "--immediate-mode",
           "-s", str(snaplen), "-B", str(buffer_kib)]
    if nano:
        cmd += ["--time-stamp-precision", "nano"]
    if user:
        cmd += ["-Z", user]
    if bpf_filter:
        cmd.append(bpf_filter)  # one argv element: tcpdump joins trailing args anyway
    return cmd


def parse_stats(stderr: str) -> CaptureStats:
    """Parse tcpdump's exit counters from its stderr; CaptureError if they are missing."""
    values: dict[str, int] = {}
    for name, pattern in _STAT_RE.items():
        match = pattern.search(stderr)
        if match:
            values[name] = int(match.group(1))
        elif name != "dropped_by_interface":
            raise CaptureError(f"tcpdump printed no '{name}' counter; stderr: {stderr!r}")
    return CaptureStats(**values)


class Capture:
    """tcpdump on ``intf`` of ``host`` writing ``path``; a context manager returning itself.

    After the ``with`` block (or ``stop()``), ``stats`` holds the counters.
    """

    def __init__(
        self,
        host: PopenHost,
        intf: str,
        path: str | os.PathLike[str],
        *,
        snaplen: int = 0,
        bpf_filter: str | None = None,
        buffer_kib: int = 8192,
        nano: bool = False,
        start_timeout: float = 5.0,
        stop_timeout: float = 5.0,
        settle: float = 0.05,
    ) -> None:
        self.host = host
        self.path = os.fspath(path)
        self.command = tcpdump_command(intf, path, snaplen=snaplen, bpf_filter=bpf_filter,
                                       buffer_kib=buffer_kib, nano=nano)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.settle = settle
        self.stats: CaptureStats | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._stderr: list[str] = []
        self._listening = threading.Event()
        self._interrupted = False  # SIGINT already sent (``interrupt``)

    @property
    def command_line(self) -> str:
        return shlex.join(self.command)

    @property
    def stderr(self) -> str:
        """What tcpdump has written to stderr so far."""
        return "".join(self._stderr)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def launched(self) -> bool:
        return self._proc is not None

    def interrupt(self) -> None:
        """Send the SIGINT that ``stop`` begins with, without waiting: tcpdump's exit waits
        for its packet socket's release, about one RCU grace period (22 ms here), which
        several captures then wait out side by side (``Captures``)."""
        if self.running and not self._interrupted:
            present(self._proc, "the tcpdump process").send_signal(signal.SIGINT)
            self._interrupted = True

    def start(self) -> None:
        """Start tcpdump and return once it is listening; CaptureError otherwise."""
        self.launch()
        self.await_listening()

    def launch(self) -> None:
        """Start tcpdump without waiting (``await_listening`` does): several captures then
        start at once (``Captures``)."""
        if self._proc is not None:
            raise CaptureError(f"capture already started: {self.command_line}")
        name = getattr(self.host, "name", type(self.host).__name__)
        log.info("%s: %s", name, self.command_line)
        # No start_new_session: Mininet's `mnexec -d` forks when it leads its process group,
        # and then the pid we signal would no longer be tcpdump's.
        proc = self.host.popen(self.command, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._proc = proc
        if proc.stderr is None:
            self._end_process()
            raise CaptureError(f"host.popen gave no stderr pipe: {self.command_line}")
        # A thread drains stderr so tcpdump can never block on a full pipe.
        self._reader = threading.Thread(target=self._drain, args=(proc.stderr,),
                                        name=f"tcpdump-stderr-{proc.pid}", daemon=True)
        self._reader.start()

    def await_listening(self) -> None:
        """Return once the launched tcpdump is listening; CaptureError (and the process
        ended) otherwise."""
        proc = self._proc
        if proc is None:
            raise CaptureError(f"capture was never launched: {self.command_line}")
        deadline = time.monotonic() + self.start_timeout
        try:
            while not self._listening.wait(0.02):
                if proc.poll() is not None or time.monotonic() > deadline:
                    break
        except BaseException:  # e.g. KeyboardInterrupt: never leave tcpdump orphaned
            self._end_process()
            raise
        if not self._listening.is_set():
            rc = proc.poll()
            self._end_process()
            why = f"exited with code {rc}" if rc is not None else (
                f"did not report listening within {self.start_timeout} s")
            raise CaptureError(f"tcpdump {why}: {self.command_line}\nstderr: {self.stderr}")

    def stop(self, *, settled: bool = False) -> CaptureStats:
        """Stop tcpdump and return its counters; CaptureError if it died or gave none.
        ``settled``: the caller already waited ``settle`` seconds (``Captures``)."""
        if self._proc is None:
            raise CaptureError(f"capture was never started: {self.command_line}")
        if self.stats is not None:
            return self.stats
        # An exit after our own SIGINT (``interrupt``) is the stop, not an early death.
        early_rc = None if self._interrupted else self._proc.poll()
        if early_rc is None and not settled and not self._interrupted:
            time.sleep(self.settle)  # packets still on their way through the stack
        rc = self._end_process()
        if early_rc is not None:
            raise CaptureError(f"tcpdump exited early with code {early_rc}: "
                               f"{self.command_line}\nstderr: {self.stderr}")
        if rc != 0:
            raise CaptureError(f"tcpdump exited with code {rc}: {self.command_line}\n"
                               f"stderr: {self.stderr}")
        try:
            stats = parse_stats(self.stderr)
        except CaptureError as err:
            raise CaptureError(f"{err}\ncommand: {self.command_line}") from err
        if stats.dropped:
            log.warning("capture %s is incomplete: %d packets dropped (%s)", self.path,
                        stats.dropped, stats)
        else:
            log.info("capture %s: %s", self.path, stats)
        self.stats = stats
        return stats

    def __enter__(self) -> Capture:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.stop()
            return
        try:
            self.stop()
        except CaptureError as err:
            # The body's exception is the real failure; keep ours visible beside it.
            log.error("stopping capture after %s failed too: %s", exc_type, err)
            exc.add_note(f"capture stop also failed: {err}")

    def _drain(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace")
            self._stderr.append(line)
            if _LISTENING in line:
                self._listening.set()
        stream.close()

    def _end_process(self) -> int:
        """SIGINT, then SIGTERM, then SIGKILL, each with a bounded wait; the exit code."""
        proc = present(self._proc, "the tcpdump process")
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is not None:
                break
            if sig is not signal.SIGINT:
                log.warning("tcpdump pid %d still running after %.1f s; sending %s",
                            proc.pid, self.stop_timeout, sig.name)
            if not (sig is signal.SIGINT and self._interrupted):
                proc.send_signal(sig)
            try:
                wait_exit(proc, self.stop_timeout)
            except subprocess.TimeoutExpired:
                continue
        rc = proc.poll()
        if rc is None:  # not even SIGKILL worked (stuck in the kernel): do not hang forever
            raise CaptureError(f"tcpdump pid {proc.pid} survived SIGKILL: {self.command_line}")
        if self._reader is not None:
            self._reader.join(self.stop_timeout)
        return rc


class Captures:
    """Several captures as one context manager: started together (each tcpdump is launched,
    then each is awaited) and stopped together after one ``settle`` wait, so the set costs
    about what one capture does. ``launch`` may come earlier than the block: the tcpdumps
    then start while the caller does something else (a point's server imports its modules),
    and a caller that never enters the block ends them with ``abandon``. Stopping stops every
    capture, also when one fails; the first failure is raised (or attached as a note to the
    body's exception)."""

    def __init__(self, *captures: Capture) -> None:
        self.captures = captures
        self._stopped = False

    def launch(self) -> None:
        """Launch every capture not launched yet, without waiting for any."""
        try:
            for cap in self.captures:
                if not cap.launched:
                    cap.launch()
        except BaseException as err:
            self.abandon(err)
            raise

    def __enter__(self) -> Captures:
        self.launch()
        try:
            for cap in self.captures:
                cap.await_listening()
        except BaseException as err:
            self.abandon(err)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop(exc)

    def abandon(self, primary: BaseException) -> None:
        """Stop whatever was launched after ``primary`` (which stays the error to raise)."""
        self._stop(primary)

    def _stop(self, primary: BaseException | None) -> None:
        """Stop every launched capture, once."""
        if self._stopped:
            return
        self._stopped = True
        running = [c for c in self.captures if c.running]
        if running:
            time.sleep(max(c.settle for c in running))
        for cap in running:  # every tcpdump's exit under way at once
            cap.interrupt()
        failure: CaptureError | None = None
        for cap in self.captures:
            if not cap.launched or cap.stats is not None:
                continue
            try:
                cap.stop(settled=True)
            except CaptureError as err:
                failure = failure or err
        if failure is None:
            return
        if primary is None:
            raise failure
        log.error("stopping captures after %s failed too: %s", type(primary), failure)
        primary.add_note(f"capture stop also failed: {failure}")
