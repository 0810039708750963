"""Tests for the server's connection threads (testbed/apps/server.py, Acceptors)."""

from __future__ import annotations

import socket
import threading
import time

from testbed.apps.server import Acceptors


def _listener() -> socket.socket:
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    return lsock


def test_acceptors_serve_concurrently_reuse_threads_and_survive_a_failure(capsys) -> None:
    release = threading.Event()
    started: list[int] = []
    all_in = threading.Semaphore(0)

    def work(sock: socket.socket, addr: tuple[str, int]) -> None:
        index = sock.recv(1)[0]  # the client names its connection in one byte
        started.append(index)
        all_in.release()
        sock.close()
        if index == 3:
            raise RuntimeError("boom")
        if index < 3:
            release.wait(5)  # three connections stay busy: the others must not wait

    lsock = _listener()
    acceptors = Acceptors(lsock, work, spare=2)
    clients = []
    for i in range(6):
        c = socket.create_connection(lsock.getsockname())
        c.sendall(bytes([i]))
        clients.append(c)
    for _ in range(6):
        assert all_in.acquire(timeout=5)
    assert sorted(started) == list(range(6))
    release.set()
    for c in clients:
        c.close()
    # The pool still serves after a failure.
    again = threading.Event()
    def work_again(sock: socket.socket, addr: tuple[str, int]) -> None:
        sock.close()
        again.set()

    acceptors.work = work_again  # type: ignore[assignment]
    c = socket.create_connection(lsock.getsockname())
    assert again.wait(5)
    c.close()
    lsock.close()
    # The failed thread reports after its work raised, which may be after everything above
    # (seen in CI under load): wait for the report, not for a moment.
    err, deadline = "", time.monotonic() + 5
    while "connection thread failed" not in err and time.monotonic() < deadline:
        time.sleep(0.01)
        err += capsys.readouterr().err
    assert "connection thread failed: RuntimeError: boom" in err


def test_accepting_thread_serves_the_connection_itself() -> None:
    # No hand-off: the thread that returned from accept() runs the connection's work.
    lsock = _listener()
    seen: list[tuple[int, str]] = []
    done = threading.Event()
    real_accept = socket.socket.accept

    class Listener(socket.socket):
        def accept(self):  # type: ignore[override]
            pair = real_accept(self)
            seen.append((threading.get_ident(), "accept"))
            return pair

    wrapped = Listener(fileno=lsock.detach())

    def work(sock: socket.socket, addr: tuple[str, int]) -> None:
        seen.append((threading.get_ident(), "work"))
        sock.close()
        done.set()

    Acceptors(wrapped, work, spare=1)
    c = socket.create_connection(wrapped.getsockname())
    assert done.wait(5)
    c.close()
    wrapped.close()
    work_thread = [t for t, what in seen if what == "work"][0]
    assert (work_thread, "accept") in seen


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


def test_prepare_runs_before_waiting_never_beside_a_connection() -> None:
    # At start each waiting thread prepares once; after a connection its thread prepares
    # again (the connection is over); the thread the connection started does not.
    lsock = _listener()
    events: list[str] = []
    lock = threading.Lock()
    served = threading.Event()

    def prepare() -> None:
        with lock:
            events.append("prepare")

    def work(sock: socket.socket, addr: tuple[str, int]) -> None:
        with lock:
            events.append("work")
        sock.close()
        served.set()

    Acceptors(lsock, work, spare=2, prepare=prepare)
    c = socket.create_connection(lsock.getsockname())
    assert served.wait(5)
    c.close()
    deadline = threading.Event()
    for _ in range(50):  # the serving thread prepares after its work returned
        with lock:
            if events.count("prepare") == 3:
                break
        deadline.wait(0.1)
    lsock.close()
    assert events == ["prepare", "prepare", "work", "prepare"]


def test_a_failing_prepare_is_reported_and_the_thread_still_serves(capsys) -> None:
    lsock = _listener()
    served = threading.Event()

    def prepare() -> None:
        raise RuntimeError("no spare")

    def work(sock: socket.socket, addr: tuple[str, int]) -> None:
        sock.close()
        served.set()

    Acceptors(lsock, work, spare=1, prepare=prepare)
    c = socket.create_connection(lsock.getsockname())
    assert served.wait(5)
    c.close()
    lsock.close()
    assert "server: prepare failed: RuntimeError: no spare" in capsys.readouterr().err


def test_a_server_waiting_for_go_exits_3_on_anything_else(monkeypatch) -> None:
    # The workload releases a --wait-go server with the line "go"; any other line (or none:
    # the run died first) ends it before it binds or listens.
    import io
    import sys

    from testbed.apps import server

    bound: list[object] = []
    monkeypatch.setattr(server.socket.socket, "bind", lambda self, addr: bound.append(addr))
    for given in ("stop\n", ""):
        monkeypatch.setattr(sys, "stdin", io.StringIO(given))
        assert server.main(["--port", "0", "--wait-go"]) == 3
    assert bound == []
