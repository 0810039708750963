"""The proxy's side of the query socket (control.py is the asking side): session-ID lookups
by 4-tuple and the ``idle`` query, answered from the proxy's session table by a thread of
their own, off the relay loop."""

from __future__ import annotations

import json
import logging
import socket
import threading
from typing import Any, Protocol

from testbed.transparent import control

logger = logging.getLogger("tcpinc.transparent")

# What a session-ID query answers of a connection's record.
ANSWERED = ("session_id", "tep", "outcome", "fallback_reason", "role", "app_local",
            "app_remote", "net_local", "net_remote")


class SessionTable(Protocol):
    """The proxy's shared state the queries read (proxy.Proxy)."""

    lock: threading.Lock
    idle: threading.Condition  # on ``lock``, notified when ``open`` reaches 0
    open: int  # accepted connections whose record is not written yet
    sessions: dict[str, dict[str, Any]]  # control.key(local, remote) -> record


def serve(table: SessionTable, name: str) -> threading.Thread:
    """Listen on the abstract unix socket ``name`` and answer queries in a daemon thread."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind("\0" + name)
    server.listen(16)
    thread = threading.Thread(target=_queries, args=(table, server), daemon=True)
    thread.start()
    return thread


def _answer_idle(table: SessionTable, conn: socket.socket, wait: float) -> None:
    """Reply once every accepted connection has ended and has its record written (or when
    ``wait`` seconds have passed): what a test waits for before reading records."""
    with conn, table.idle:
        idle = table.idle.wait_for(lambda: table.open == 0, timeout=wait)
        reply = json.dumps({"idle": idle, "open": table.open}).encode() + b"\n"
        try:
            conn.sendall(reply)
        except OSError as exc:
            logger.info("idle query client went away: %s", exc)


def _queries(table: SessionTable, server: socket.socket) -> None:
    while True:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(2.0)
            try:
                line = conn.recv(control.MAX_LINE).split(b"\n", 1)[0]
                wait = control.idle_request(line)
                if wait is not None:  # answered when idle, by a thread of its own
                    threading.Thread(target=_answer_idle, daemon=True,
                                     args=(table, conn.dup(), wait)).start()
                    continue
                wanted = control.parse_request(line)
                with table.lock:
                    found = table.sessions.get(wanted)
                reply: dict[str, Any] = {"found": found is not None}
                if found is not None:
                    reply.update({k: found.get(k) for k in ANSWERED})
            except (OSError, ValueError, TypeError) as exc:
                reply = {"found": False, "error": str(exc)}
            try:
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError as exc:
                logger.info("query client went away: %s", exc)
