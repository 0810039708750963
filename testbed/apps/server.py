"""Request/response server run inside a host: `python -m testbed.apps.server`.

Prints ``ready`` once listening. Each connection carries requests (see
testbed/apps/wire.py); each is answered with the requested number of pattern
bytes. Stops on SIGTERM/SIGINT.

Each connection is accepted by a thread already waiting in ``accept()``, which lets the
transport wrap it (for ENO protocols: the ENO result and the TEP handshake) and then
serves it.
With ``--records FILE`` the server appends one JSON line per connection as soon
as it is set up (``event: setup``, and ``event: failed`` if it fails later): the
server's view of outcome, TEP, fallback reason and session ID, matched to client
records by port (and by order, since a port can serve several connections).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import IO, Any

from testbed import helperproc
from testbed.apps.priority import raise_priority
from testbed.apps.transport import get_transport
from testbed.apps.wire import REQUEST, WireError, decode_request_header, pattern
from testbed.stream import StreamError


def _read_exact(conn: object, size: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < size:
        chunk = conn.recv(size - len(buf))  # type: ignore[attr-defined]
        if not chunk:
            return None if not buf else bytes(buf)
        buf += chunk
    return bytes(buf)


def serve_connection(conn: object, request_size: int,
                     on_first_request: Callable[[int], None] | None = None,
                     on_answered: Callable[[], None] | None = None) -> str | None:
    """Answer requests until the client closes; returns the error that ended it, if any.
    ``on_first_request`` gets the first request's id, ``on_answered`` runs after each
    response was handed to the socket."""
    first = True
    try:
        while True:
            header = _read_exact(conn, REQUEST.size)
            if header is None:
                return None
            request_id, response_size = decode_request_header(header)
            if first and on_first_request is not None:
                on_first_request(request_id)
            first = False
            padding = request_size - REQUEST.size
            if padding > 0 and _read_exact(conn, padding) is None:
                return None
            conn.sendall(pattern(request_id, response_size))  # type: ignore[attr-defined]
            if on_answered is not None:
                on_answered()
    except (OSError, WireError, StreamError) as exc:
        print(f"server: connection error: {exc}", file=sys.stderr, flush=True)
        return f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()  # type: ignore[attr-defined]


class Records:
    """Per-connection JSON lines (one writer lock for all connection threads)."""

    def __init__(self, out: IO[str] | None) -> None:
        self.out = out
        self.lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        if self.out is None:
            return
        with self.lock:
            self.out.write(json.dumps(record) + "\n")
            self.out.flush()


def handle(transport: Any, sock: socket.socket, addr: tuple[str, int], request_size: int,
           records: Records, sched_policy: str | None = None) -> None:
    """Wrap (ENO result, TEP handshake) and serve one accepted socket."""
    peer_port = int(addr[1])
    try:
        conn = transport.accept(sock, addr)
    except (OSError, StreamError) as exc:
        sock.close()
        print(f"server: connection setup failed: {exc}", file=sys.stderr, flush=True)
        records.write({"event": "setup", "peer_port": peer_port, "outcome": "failed",
                       "fallback_reason": getattr(exc, "reason", None),
                       "error": f"{type(exc).__name__}: {exc}"})
        return
    info = conn.info
    setup = {"event": "setup", "peer_port": peer_port, "outcome": info.outcome,
             "tep": info.tep, "fallback_reason": info.fallback_reason, "eno": info.eno,
             "role": info.role, "session_id": info.session_id, "error": None,
             "sched_policy": sched_policy}
    pending = [setup]
    answered = getattr(conn, "answered", None)  # work the connection put after its response

    def flush() -> None:
        # Written once a response has left (or the connection ended): a file write (about
        # 0.1 ms on the development VM) between the request's arrival and the response would
        # count as the server's host time.
        if answered is not None:
            answered()
        while pending:
            records.write(pending.pop(0))

    # The request id names the client's connection even where a proxy changed the port.
    error = serve_connection(conn, request_size, lambda rid: pending.append(
        {"event": "request", "peer_port": peer_port, "request_id": rid}), flush)
    flush()
    late = conn.info.session_id
    if late != info.session_id:
        # A TLS server that answered 0-RTT data learns the session ID from the client's
        # Finished, after setup (testbed/tepio.py, run_until_data).
        records.write({"event": "update", "peer_port": peer_port, "session_id": late})
    if error is not None:
        records.write({"event": "failed", "peer_port": peer_port, "outcome": "failed",
                       "error": error})


class Acceptors:
    """Connection threads that each wait in ``accept()`` on the listening socket themselves.

    The thread the kernel wakes for a new connection serves it: no hand-off from an accepting
    thread to a worker (a second wake-up, through a queue, between the TCP handshake and the
    first TEP message; measured at 0.2-0.4 ms of the server's host time per connection on
    the development VM). Whenever fewer than ``spare`` threads are left waiting, the thread
    that just accepted starts another before it serves: concurrency is unbounded, and a
    thread goes back to ``accept()`` once its connection ends.

    ``prepare`` (the transport's) runs before a thread waits in ``accept()``: at start, and
    after each connection it served, never while another thread's connection is under way
    because a connection started this thread.
    """

    def __init__(self, lsock: socket.socket,
                 work: Callable[[socket.socket, tuple[str, int]], None],
                 spare: int = 2, prepare: Callable[[], None] | None = None) -> None:
        self.lsock = lsock
        self.work = work
        self.spare = spare
        self.prepare = prepare
        self.lock = threading.Lock()
        self.idle = 0
        for _ in range(spare):
            self._start(prepare_first=True)

    def _start(self, *, prepare_first: bool) -> None:
        with self.lock:
            self.idle += 1
        threading.Thread(target=self._run, args=(prepare_first,), daemon=True).start()

    def _accepted(self) -> None:
        with self.lock:
            self.idle -= 1  # this thread is busy from now on
            short = self.idle < self.spare
        if short:
            self._start(prepare_first=False)  # the accepted connection has the CPU now

    def _prepare(self) -> None:
        if self.prepare is None:
            return
        try:
            self.prepare()
        except Exception as exc:  # the connection then makes its own; the thread goes on
            print(f"server: prepare failed: {type(exc).__name__}: {exc}", file=sys.stderr,
                  flush=True)

    def _run(self, prepare_first: bool) -> None:
        if prepare_first:
            self._prepare()
        while True:
            try:
                sock, addr = self.lsock.accept()
            except OSError as exc:  # the listener closed (the server is stopping)
                print(f"server: accept ended: {exc}", file=sys.stderr, flush=True)
                with self.lock:
                    self.idle -= 1
                return
            self._accepted()
            try:
                # The peer may already have reset it (a refused ENO policy): setup then
                # fails in ``work``, with a record.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.work(sock, addr)
            except Exception as exc:  # a bug in one connection must not take the thread
                print(f"server: connection thread failed: {type(exc).__name__}: {exc}",
                      file=sys.stderr, flush=True)
                sock.close()
            with self.lock:
                self.idle += 1
            self._prepare()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--proto", default="plain")
    parser.add_argument("--request-size", type=int, default=REQUEST.size)
    parser.add_argument("--policy", default=None, help="ENO protocols: off|opportunistic|required")
    parser.add_argument("--records", default=None, help="append per-connection JSON lines here")
    parser.add_argument("--rt-priority", type=int, default=0,
                        help="run under SCHED_FIFO at this priority (testbed/apps/priority.py)")
    parser.add_argument("--wait-go", action="store_true",
                        help="import everything, then listen only once a line 'go' arrives on "
                             "stdin (anything else, or none, exits 3)")
    args = parser.parse_args(argv)
    if not 0 <= args.rt_priority <= 99:
        parser.error("--rt-priority must be 0 (off) .. 99")
    transport = get_transport(args.proto, args.policy)
    # A workload starts the server beside the ENO hooks (its imports overlap theirs) and
    # releases it once the hooks are up: a listener that registers with a hook not yet
    # listening falls back to plain TCP for its whole life (testbed/stream.py, Listener).
    if args.wait_go and sys.stdin.readline() != "go\n":
        return 3
    out = open(args.records, "a") if args.records else None  # noqa: SIM115 (closed below)
    records = Records(out)
    helperproc.install()  # from the start: a stop during set-up ends the process too
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((args.bind, args.port))
    transport.listen(lsock)
    lsock.listen(1024)
    # Before the connection threads start: they inherit the policy.
    policy = raise_priority(args.rt_priority)
    Acceptors(lsock, lambda sock, addr: handle(transport, sock, addr, args.request_size,
                                               records, policy),
              prepare=getattr(transport, "prepare", None))
    helperproc.run(_wait_for_stop, teardown=lambda: _close(lsock, out))
    return 0


def _wait_for_stop() -> None:
    while True:
        signal.pause()  # the connection threads accept; this thread waits for a signal


def _close(lsock: socket.socket, out: IO[str] | None) -> None:
    lsock.close()
    if out is not None:
        out.close()


if __name__ == "__main__":
    sys.exit(main())
