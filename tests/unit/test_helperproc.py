"""The helper skeleton (testbed/helperproc.py): ready line, stop by signal, stats, teardown."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from testbed import helperproc

HELPER = r"""
import select, sys
from testbed import helperproc

def dump(final, error):
    print(f"dump {final} {error}", flush=True)

def serve():
    while True:
        select.select([], [], [], 60)  # blocked: only an exception gets it out (PEP 475)

def teardown():
    print("teardown", flush=True)

error = helperproc.run(serve, dump=dump, teardown=teardown)
print(f"exit {error}", flush=True)
"""


def _start() -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HELPER], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    return proc


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_leaves_the_blocked_loop_then_teardown_then_final_stats(stop: int):
    proc = _start()
    assert proc.stdout is not None
    proc.send_signal(signal.SIGUSR1)
    assert proc.stdout.readline() == "dump False None\n"  # live stats; the loop goes on
    proc.send_signal(stop)
    out, _ = proc.communicate(timeout=10)
    assert out.splitlines() == ["teardown", "dump True None", "exit None"]
    assert proc.returncode == 0


def test_a_listed_error_is_reported_in_the_final_stats_and_returned(monkeypatch):
    monkeypatch.setattr(signal, "signal", lambda *_args: None)  # this process keeps its own
    seen: list[tuple[bool, str | None]] = []

    def fail() -> None:
        raise OSError(19, "No such device")

    error = helperproc.run(fail, dump=lambda final, err: seen.append((final, err)),
                           announce=False, errors=(OSError,))
    assert error == "OSError: [Errno 19] No such device"
    assert seen == [(True, error)]


def test_another_error_propagates_after_teardown_and_final_stats(monkeypatch):
    monkeypatch.setattr(signal, "signal", lambda *_args: None)
    steps: list[str] = []

    def fail() -> None:
        raise ValueError("bug")

    with pytest.raises(ValueError, match="bug"):
        helperproc.run(fail, dump=lambda final, _err: steps.append(f"dump {final}"),
                       teardown=lambda: steps.append("teardown"), announce=False)
    assert steps == ["teardown", "dump True"]


def test_a_helper_may_bring_its_own_stop_handler_and_leave_sigusr1_alone(monkeypatch):
    """The ENO hook's way: its handler holds a stop during a packet callback, and its live
    stats go over its control channel, so SIGUSR1 is not taken."""
    calls: list[tuple[int, object]] = []
    monkeypatch.setattr(signal, "signal", lambda signum, handler: calls.append((signum, handler)))
    finals: list[bool] = []

    def held(signum: int, _frame: object) -> None:
        raise helperproc.Stop(signum)

    def serve() -> None:
        raise helperproc.Stop(signal.SIGTERM)  # as the handler raises it once the verdict is out

    error = helperproc.run(serve, dump=lambda final, _err: finals.append(final), announce=False,
                           live_stats=False, on_stop=held)
    assert error is None and finals == [True]
    assert calls[:2] == [(signal.SIGTERM, held), (signal.SIGINT, held)]
    assert calls[2:] == [(signal.SIGTERM, signal.SIG_IGN), (signal.SIGINT, signal.SIG_IGN),
                         (signal.SIGUSR1, signal.SIG_IGN)]  # quiet for the final write


def test_the_stop_gate_holds_a_signal_while_busy_and_raises_it_at_the_check():
    gate = helperproc.StopGate()
    gate.check()  # nothing held: no stop
    gate.busy = True
    gate.handler(signal.SIGTERM, None)  # inside the work: held, not raised
    assert gate.pending == signal.SIGTERM
    gate.busy = False
    with pytest.raises(helperproc.Stop) as held:
        gate.check()
    assert held.value.signum == signal.SIGTERM
    with pytest.raises(helperproc.Stop) as now:
        helperproc.StopGate().handler(signal.SIGINT, None)  # not busy: at once
    assert now.value.signum == signal.SIGINT
