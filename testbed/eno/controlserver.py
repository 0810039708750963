"""The ENO hook's control channel, server side (protocol in control.py).

Applications in the host register listeners, announce active opens, push resumption answers
and ask for results over an abstract AF_UNIX SOCK_SEQPACKET socket (root only, checked with
SO_PEERCRED). The hook process (hook.py) serves it from its one epoll loop: this class owns
the socket, its clients and the readers waiting for a result, and changes the engine's
registrations (engine.py, listeners.py); ``drain`` and ``decided`` are what the packet path
calls when performing the engine's actions.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from testbed.eno.control import (
    DEFAULT_NAME,
    MAX_MESSAGE,
    PROTOCOL_VERSION,
    ControlError,
    Settings,
    address,
    decode,
    encode,
    hex_bytes,
)
from testbed.eno.engine import HookEngine, Key

logger = logging.getLogger("tcpinc.eno.hook")

_UCRED = struct.Struct("3i")  # struct ucred from SO_PEERCRED: pid, uid, gid
DRAIN_ROUNDS = 64


@dataclass
class _Waiter:
    client: socket.socket
    message_id: object
    key: Key
    deadline: float


class ControlServer:
    """The control channel's server side (protocol in control.py)."""

    def __init__(self, engine: HookEngine, name: str = DEFAULT_NAME) -> None:
        self.engine = engine
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.bind(address(name))
        self.sock.listen(socket.SOMAXCONN)
        self.sock.setblocking(False)
        # epoll through selectors: select() fails on descriptors above 1023
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.sock, selectors.EVENT_READ, self)
        self.clients: dict[int, socket.socket] = {}
        self.waiters: list[_Waiter] = []
        self.refused = 0
        self.errors = 0
        self.extra_stats: Callable[[], dict[str, Any]] = dict

    def close(self) -> None:
        for client in list(self.clients.values()):
            client.close()
        self.clients.clear()
        self.selector.close()
        self.sock.close()

    def next_deadline(self) -> float:
        return min((w.deadline for w in self.waiters), default=float("inf"))

    def ready(self, sock: socket.socket, now: float) -> None:
        if sock is self.sock:
            self._accept()
            return
        if sock.fileno() < 0:  # dropped earlier in this batch of events
            return
        try:
            data = sock.recv(MAX_MESSAGE)
        except BlockingIOError:
            return  # already served by drain() earlier in this round
        except OSError:
            data = b""
        if not data:
            self._drop(sock)
            return
        self._serve(sock, data, now)

    def tick(self, now: float) -> None:
        """Answer waiters whose time is up with what is known so far."""
        due = [w for w in self.waiters if w.deadline <= now]
        for waiter in due:
            self.waiters.remove(waiter)
            self._answer_result(waiter.client, waiter.message_id, waiter.key)

    def _accept(self) -> None:
        """Accept every pending control connection (a burst of new streams opens many)."""
        while True:
            try:
                client, _ = self.sock.accept()
            except BlockingIOError:
                return
            creds = client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            _pid, uid, _gid = _UCRED.unpack(creds)
            if uid != 0:  # only root in this host may steer ENO
                self.refused += 1
                client.close()
                continue
            client.setblocking(False)
            self.clients[client.fileno()] = client
            self.selector.register(client, selectors.EVENT_READ, self)

    def _drop(self, client: socket.socket) -> None:
        if client.fileno() < 0:
            return
        self.clients.pop(client.fileno(), None)
        self.selector.unregister(client)
        for port in [p for p, lst in self.engine.listeners.items() if lst.owner is client]:
            self.engine.unlisten(port, client)
        self.waiters = [w for w in self.waiters if w.client is not client]
        client.close()

    def _send(self, client: socket.socket, reply: dict[str, Any]) -> None:
        try:
            client.send(encode(reply))
        except OSError as exc:  # a client that does not read its replies is dropped
            logger.warning("control client dropped: %s", exc)
            self._drop(client)

    def _serve(self, client: socket.socket, data: bytes, now: float) -> None:
        message_id: object = None
        try:
            message = decode(data)
            message_id = message.get("id")
            reply = self._dispatch(client, message, now)
        except (ControlError, ValueError, KeyError, TypeError, IndexError) as exc:
            self.errors += 1
            logger.debug("control request refused: %s", exc)
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            if _one_way(data):
                reply = None  # a one-way message gets no reply, not even an error
        if reply is not None:
            self._send(client, {"id": message_id, **reply})

    def _dispatch(
        self, client: socket.socket, message: dict[str, Any], now: float
    ) -> dict[str, Any] | None:
        op, engine = message.get("op"), self.engine
        if op == "hello":
            return {"ok": True, "version": PROTOCOL_VERSION, "pid": os.getpid()}
        if op == "listen":
            engine.listen(_port(message), Settings.from_json(message["settings"]), client)
            return {"ok": True}
        if op == "unlisten":
            return {"ok": engine.unlisten(_port(message), client)}
        if op == "announce":
            ttl = float(message.get("ttl", 30.0))
            engine.announce(_port(message), Settings.from_json(message["settings"]), now, ttl)
            return None if message.get("noreply") else {"ok": True}
        if op == "cancel":
            return {"ok": True, "cancelled": engine.cancel(_port(message))}
        if op == "answer":  # passive resumption, RFC 8548 §3.5 (engine.py)
            deadline = now + float(message["ttl"])
            engine.answer(_port(message), int(message["tep_id"]),
                          hex_bytes(message["key"], "key"), hex_bytes(message["data"], "data"),
                          deadline)
            return None if message.get("noreply") else {"ok": True}
        if op == "unanswer":
            done = engine.unanswer(_port(message), int(message["tep_id"]),
                                   hex_bytes(message["key"], "key"))
            return None if message.get("noreply") else {"ok": True, "withdrawn": done}
        if op == "result":
            return self._result_request(client, message, now)
        if op == "stats":
            return {"ok": True, "stats": {**engine.stats(), **self.extra_stats(),
                                          "control_refused": self.refused,
                                          "control_errors": self.errors}}
        raise ControlError(f"unknown op {op!r}")

    def drain(self) -> None:
        """Serve control messages already waiting (called from the packet path, so it never
        touches the queue): a one-way announcement may sit here when its SYN arrives. It was
        sent before the SYN, so it is in a socket buffer now; bounded so a flood of control
        messages cannot hold a packet for long."""
        for _ in range(DRAIN_ROUNDS):
            ready = [key for key, _ in self.selector.select(0) if key.data is self]
            if not ready:
                return
            now = time.monotonic()
            for key in ready:
                self.ready(key.fileobj, now)  # type: ignore[arg-type]

    def _result_request(
        self, client: socket.socket, message: dict[str, Any], now: float
    ) -> dict[str, Any] | None:
        local, remote = message["local"], message["remote"]
        key: Key = (str(local[0]), int(local[1]), str(remote[0]), int(remote[1]))
        wait = float(message.get("wait", 0.0))
        result = self.engine.result(key)
        # No entry: the hook did not follow this connection (its SYN, held or read before
        # the kernel could complete the handshake, was not ours). Waiting would not help.
        if wait > 0 and result is not None and result.outcome is None and result.error is None:
            self.waiters.append(_Waiter(client, message.get("id"), key, now + wait))
            return None
        return {"ok": True, "result": result.to_json() if result else None}

    def _answer_result(self, client: socket.socket, message_id: object, key: Key) -> None:
        if client.fileno() not in self.clients:
            return
        result = self.engine.result(key)
        payload = result.to_json() if result else None
        self._send(client, {"id": message_id, "ok": True, "result": payload})

    def decided(self, key: Key) -> None:
        """Answer the readers waiting for ``key``'s result, which just became final."""
        ready = [w for w in self.waiters if w.key == key]
        for waiter in ready:
            self.waiters.remove(waiter)
            self._answer_result(waiter.client, waiter.message_id, key)


def _one_way(data: bytes) -> bool:
    return b'"noreply":true' in data


def _port(message: dict[str, Any]) -> int:
    port = message["port"]
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ControlError(f"bad port {port!r}")
    return port
