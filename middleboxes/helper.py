"""The parts every middlebox process shares (NFQUEUE runner, proxy) and its box-side twin.

Process side: the helper skeleton (testbed/helperproc.py) raises ``Stop`` from the
SIGTERM/SIGINT handler, because a handler that only sets a flag never ends a loop blocked in
select(): PEP 475 restarts the call (docs/platform.md §6.8). SIGUSR1 asks for the counters
now: ``StatsWriter`` writes the stats file (atomically, with a serial number that grows) and
the handler returns, so the blocked call simply resumes. Nothing is printed after
``ready``: the network keeps the helper's stdout/stderr as pipes that nobody drains while
it runs, and a full pipe would block the box.

Box side: ``HelperProcess`` starts the process through ``Network.start_helper`` (an
essential helper: if it dies, ``net.check()`` and teardown raise ProcessDiedError), reads
live counters by sending SIGUSR1 and waiting for a newer serial, and keeps the final
counters the process writes when it stops.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from middleboxes.iptables import IptablesBox
from testbed.errors import ProcessDiedError, present

if TYPE_CHECKING:
    import subprocess

    from testbed.net.network import Network


class StatsWriter:
    """Writes ``snapshot()`` plus a serial number to ``path``, atomically."""

    def __init__(self, path: Path, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.path = path
        self.snapshot = snapshot
        self.serial = 0

    def dump(self, final: bool, _error: str | None = None) -> None:
        """The helper skeleton's stats hook (testbed/helperproc.py)."""
        self.write(final)

    def write(self, final: bool = False) -> None:
        self.serial += 1
        data = {**self.snapshot(), "serial": self.serial, "final": final, "pid": os.getpid()}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(data, sort_keys=True))
        os.replace(tmp, self.path)


def read_stats(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return data


class HelperProcess:
    """One middlebox process inside a node, as the box that owns it sees it."""

    def __init__(self, net: Network, node: str, name: str, argv: list[str],
                 stats: Path) -> None:
        self.net, self.node, self.name, self.stats = net, node, name, stats
        self.final: dict[str, Any] | None = None
        stats.unlink(missing_ok=True)
        self.proc: subprocess.Popen[str] = net.start_helper(node, name, argv, ready="ready")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def snapshot(self, timeout: float = 3.0) -> dict[str, Any]:
        """Live stats (SIGUSR1 round trip); the final ones once the process has stopped."""
        if self.final is not None:
            return self.final
        if not self.alive():
            raise ProcessDiedError(f"{self.name} in {self.node} exited "
                                   f"({self.proc.returncode}); its counters are lost")
        before = read_stats(self.stats)
        serial = before["serial"] if before else 0
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = read_stats(self.stats)
            if now is not None and now["serial"] > serial:
                return now
            if not self.alive():
                break
            time.sleep(0.005)
        raise ProcessDiedError(f"{self.name} in {self.node} did not report its counters")

    def stop(self) -> dict[str, Any]:
        """Stop the process (ProcessDiedError if it had died) and keep its final stats."""
        self.net.stop_helper(self.proc)
        final = read_stats(self.stats)
        if final is None or not final.get("final"):
            raise ProcessDiedError(f"{self.name} in {self.node} wrote no final counters")
        self.final = final
        return final


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


_COUNTER_KEYS = ("seen", "changed", "dropped", "reset")


class HelperBox(IptablesBox):
    """A box made of rules plus one essential process started before the rules.

    Install: process first (it is ready before any packet reaches it), then the rules.
    Removal: rules first (nothing more reaches a stopping process), then SIGTERM; the
    final stats the process writes stay readable through ``stats()`` / ``counters()``.
    """

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.helper: HelperProcess | None = None
        self.final_stats: dict[str, Any] | None = None

    def argv(self, stats: Path) -> list[str]:
        raise NotImplementedError

    def _install(self) -> None:
        net = present(self.net, f"the network middlebox {self.name} is installed in")
        stats = net.workdir / f"{self.chain()}-{id(self):x}.json"
        self.helper = HelperProcess(net, self.node, f"middlebox:{self.name}",
                                    self.argv(stats), stats)
        try:
            super()._install()
        except BaseException:
            self.helper.stop()
            raise

    def _remove(self) -> None:
        try:
            super()._remove()
        finally:
            if self.helper is not None:
                self.final_stats = self.helper.stop()
                self.helper = None

    def remove(self) -> None:
        # Skips IptablesBox.remove's counter read: the process reports final counters.
        if self.net is not None:
            self._remove()
            self.net = None

    def stats(self) -> dict[str, Any]:
        """Everything the process reports (counters, parameters, kill reasons, errors)."""
        if self.helper is not None:
            return self.helper.snapshot()
        return self.final_stats or {"counters": {k: 0 for k in _COUNTER_KEYS}}

    def counters(self) -> dict[str, int]:
        counters = self.stats()["counters"]
        return {k: int(counters[k]) for k in _COUNTER_KEYS}

    def kernel_counters(self) -> dict[str, int]:
        return self.counters()
