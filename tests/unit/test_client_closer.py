"""The client's Closer (testbed/apps/client.py): which closes run beside the next connection."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from testbed.apps.client import Closer


class Conn:
    """A connection whose close blocks until released; ``tep``: its stream has a TEP."""

    def __init__(self, tep: bool, close_before_next: bool = False) -> None:
        self.stream = SimpleNamespace(tep_driver=object() if tep else None)
        self.close_before_next = close_before_next
        self.release = threading.Event()
        self.closed = threading.Event()
        self.closed_on: threading.Thread | None = None

    def close(self) -> None:
        self.closed_on = threading.current_thread()
        assert self.release.wait(5)
        self.closed.set()


def test_a_tep_close_runs_beside_the_caller_and_join_waits_for_it() -> None:
    closer, conn = Closer(), Conn(tep=True)
    closer.close(conn)  # returns although the close is still waiting for the peer
    assert not conn.closed.is_set()
    assert conn.closed_on is not None and conn.closed_on is not threading.current_thread()
    conn.release.set()
    closer.join()
    assert conn.closed.is_set()


def test_closes_the_next_connection_needs_and_closes_without_a_tep_run_in_the_caller() -> None:
    closer = Closer()
    for conn in (Conn(tep=True, close_before_next=True), Conn(tep=False)):
        conn.release.set()
        closer.close(conn)
        assert conn.closed.is_set() and conn.closed_on is threading.current_thread()
    plain = SimpleNamespace(closed=False)  # a PlainConn: no stream at all
    plain.close = lambda: setattr(plain, "closed", True)
    closer.close(plain)
    assert plain.closed
