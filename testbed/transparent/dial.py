"""Connections the proxy opens from its event loop: no thread hand-off per connection.

Where nothing has to be negotiated (policy ``off``, or no ENO hook under ``opportunistic``)
the proxy's only work for a new connection is to open the other leg: to the application's
original destination (outgoing) or to the application behind the listen port, over loopback
(incoming). Both are a non-blocking ``connect`` whose completion the relay's selector
reports as writability (connect(2), EINPROGRESS: SO_ERROR then says how it ended); the pair
joins the relay in the same loop turn. Handing such a connection to a worker thread and
back cost two thread wake-ups per proxy, milliseconds on a loaded machine, on every
connection's first byte.

A dial that has not completed by its deadline fails like a refused one: the connection the
proxy already holds is reset, so the application sees a reset, never a hang.
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass
from typing import Any

Addr = tuple[str, int]


@dataclass(eq=False)  # hashed by identity: pending dials live in a set
class Dial:
    """``held``: the connection already accepted; ``sock``: the leg being opened."""

    held: socket.socket
    sock: socket.socket
    target: Addr
    record: dict[str, Any]
    deadline: float

    @classmethod
    def start(cls, held: socket.socket, target: Addr, record: dict[str, Any],
              deadline: float) -> Dial:
        """Begin a non-blocking connect to ``target`` (raises OSError if it fails at once,
        e.g. no route)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            # The relay forwards what it has at once (relay.py, Pair.create).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code = sock.connect_ex(target)
            if code not in (0, errno.EINPROGRESS):
                raise OSError(code, os.strerror(code))
        except BaseException:
            sock.close()
            raise
        return cls(held, sock, target, record, deadline)

    def result(self) -> OSError | None:
        """After writability: None if connected, else the error (ConnectionRefusedError...)."""
        code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return OSError(code, os.strerror(code)) if code else None

    def expired(self) -> OSError:
        return TimeoutError(errno.ETIMEDOUT, f"connect to {self.target[0]}:{self.target[1]} "
                                             "timed out")
