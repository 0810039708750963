"""Tests for the server's connection threads (testbed/apps/server.py, Workers)."""

from __future__ import annotations

import socket
import threading

from testbed.apps.server import Workers


def test_workers_serve_concurrently_reuse_threads_and_survive_a_failure(capsys) -> None:
    release = threading.Event()
    started: list[int] = []
    all_in = threading.Semaphore(0)

    def work(sock: socket.socket, addr: tuple[str, int]) -> None:
        started.append(addr[1])
        all_in.release()
        sock.close()
        if addr[1] == 3:
            raise RuntimeError("boom")
        if addr[1] < 3:
            release.wait(5)  # three connections stay busy: the others must not wait

    workers = Workers(work, spare=2)
    pairs = [socket.socketpair() for _ in range(6)]
    for i, (a, _) in enumerate(pairs):
        workers.submit(a, ("peer", i))
    for _ in range(6):
        assert all_in.acquire(timeout=5)
    assert sorted(started) == list(range(6))
    release.set()
    for _, b in pairs:
        b.close()
    # The pool still serves after a failure and after its threads went back to waiting.
    again = threading.Event()
    workers.work = lambda sock, addr: (sock.close(), again.set())  # type: ignore[assignment]
    a, b = socket.socketpair()
    workers.submit(a, ("peer", 9))
    assert again.wait(5)
    b.close()
    assert "connection thread failed: RuntimeError: boom" in capsys.readouterr().err


def test_records_wait_until_the_response_left() -> None:
    # The server's record lines are written after the response (testbed/apps/server.py), so
    # no file write sits between a request's arrival and its answer.
    from testbed.apps.server import serve_connection
    from testbed.apps.wire import encode_request

    events: list[str] = []

    class Conn:
        def __init__(self) -> None:
            self.inbox = bytearray(encode_request(7, 5, 12) + encode_request(8, 3, 12))

        def recv(self, size: int) -> bytes:
            out = bytes(self.inbox[:size])
            del self.inbox[:size]
            return out

        def sendall(self, data: bytes) -> None:
            events.append(f"sent {len(data)}")

        def close(self) -> None:
            events.append("closed")

    error = serve_connection(Conn(), 12, lambda rid: events.append(f"request {rid}"),
                             lambda: events.append("answered"))
    assert error is None
    assert events == ["request 7", "sent 5", "answered", "sent 3", "answered", "closed"]
