"""The one skeleton of a long-running helper process: ready line, stop, stats, teardown.

Every helper a network starts (the Python delay line, the application server, the NFQUEUE and
proxy middleboxes, the ENO hook, the transparent proxy) keeps this contract with its parent
(``Network.start_helper`` and ``wait_for_line`` in testbed/net/procs.py):

* it prints one line, ``ready``, once it can take traffic (``announce_ready``);
* SIGTERM and SIGINT raise ``Stop`` out of whatever the main thread is blocked in: Python
  restarts an interrupted system call after a handler that returns (PEP 475), so a handler that
  only set a flag would leave a blocking ``select`` or ``accept`` waiting; raising lets every
  ``finally`` on the way out run;
* SIGUSR1 writes its live stats, when it has any (the ENO hook answers for them on its control
  channel instead, testbed/eno/hook.py);
* on every way out its teardown runs and then its final stats are written, with the stop
  signals ignored, so that a second SIGTERM cannot interrupt the one write the parent reads.

``run`` does all of it around a helper's loop. The stats' format stays each helper's own. A
helper may bring its own stop handler (the ENO hook holds a signal that arrives while it owes
the kernel a verdict); it must raise ``Stop``, at once or later.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType

READY = "ready"
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stop(Exception):
    """Raised by the SIGTERM/SIGINT handler to end a blocking main loop."""

    def __init__(self, signum: int = 0) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


def raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise Stop(signum)


class StopGate:
    """A stop signal held while a helper is inside work that must finish first (the ENO
    hook's packet verdict, the delay line's batch counts): ``handler`` is the helper's
    ``on_stop`` for ``run``; set ``busy`` around the work and ``check`` after it."""

    __slots__ = ("busy", "pending")

    def __init__(self) -> None:
        self.busy = False
        self.pending: int | None = None

    def handler(self, signum: int, _frame: FrameType | None) -> None:
        """``Stop`` now, or held until ``check`` when the helper is busy."""
        if self.busy:
            self.pending = signum
            return
        raise Stop(signum)

    def check(self) -> None:
        """Raise ``Stop`` for a signal held while busy."""
        if self.pending is not None:
            raise Stop(self.pending)


def announce_ready(line: str = READY) -> None:
    """The ready line the parent waits for (flushed at once: stdout is a pipe)."""
    print(line, flush=True)


Handler = Callable[[int, FrameType | None], None]


def install(dump: Callable[[bool, str | None], None] | None = None, *,
            on_stop: Handler = raise_stop) -> None:
    """SIGTERM/SIGINT go to ``on_stop`` (which raises ``Stop``); SIGUSR1 writes the live stats
    through ``dump`` (None: SIGUSR1 is left as it was)."""
    for signum in _STOP_SIGNALS:
        signal.signal(signum, on_stop)
    if dump is not None:
        signal.signal(signal.SIGUSR1, lambda _signum, _frame: dump(False, None))


def quiet() -> None:
    """Ignore the stop and stats signals (the final write must not be interrupted)."""
    for signum in (*_STOP_SIGNALS, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)


def run(
    serve: Callable[[], object], *, dump: Callable[[bool, str | None], None] | None = None,
    teardown: Callable[[], object] | None = None, announce: bool = True,
    errors: tuple[type[Exception], ...] = (), live_stats: bool = True,
    on_stop: Handler = raise_stop,
) -> str | None:
    """Run a helper's loop ``serve`` until ``Stop``; returns the error that ended it, if any.

    ``announce``: print the ready line before ``serve`` (False: ``serve`` prints it itself,
    once it has bound what it serves). ``errors``: exceptions that end the loop as a reported
    failure (their text goes to the final stats and is returned); any other exception
    propagates, after the teardown and the final stats. ``dump(final, error)`` writes the
    stats; ``teardown`` releases what the loop held, before the final stats. ``live_stats``
    False: ``dump`` writes only the final stats (SIGUSR1 is not taken). ``on_stop``: the
    SIGTERM/SIGINT handler."""
    install(dump if live_stats else None, on_stop=on_stop)
    error: str | None = None
    try:
        if announce:
            announce_ready()
        serve()
    except Stop:
        pass  # the normal way out
    except errors as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        quiet()
        try:
            if teardown is not None:
                teardown()
        finally:
            if dump is not None:
                dump(True, error)
    return error
