"""How the workload apps open connections for each protocol name.

Every protocol the probe and the experiments know is a ``Transport`` here: it
opens a client connection (optionally carrying the first request bytes, as TCP
Fast Open does) and wraps an accepted server connection. Each connection
reports the stable probe keys (outcome, tep, fallback_reason, session IDs) and
its per-phase timestamps.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import Any

from testbed.errors import ConfigError

TCP_FASTOPEN = 23  # server: length of the TFO pending queue (RFC 7413 §4.1)
TCP_FASTOPEN_CONNECT = 30  # client: connect() defers the SYN to the first write
TFO_QUEUE = 64


@dataclass
class ConnInfo:
    outcome: str = "plaintext"  # encrypted | plaintext | failed
    tep: str | None = None
    fallback_reason: str | None = None
    session_id: str | None = None
    session_id_peer: str | None = None
    phases: dict[str, float] = field(default_factory=dict)  # name -> perf_counter seconds


class PlainConn:
    """A plain kernel TCP connection."""

    def __init__(self, sock: socket.socket, info: ConnInfo) -> None:
        self.sock = sock
        self.info = info

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, size: int) -> bytes:
        return self.sock.recv(size)

    def close(self) -> None:
        self.sock.close()

    @property
    def local_port(self) -> int:
        return int(self.sock.getsockname()[1])


@dataclass(frozen=True)
class PlainTransport:
    name: str
    tfo: bool = False
    description: str = ""

    def connect(self, addr: tuple[str, int], timeout: float, first: bytes) -> tuple[PlainConn, int]:
        """Open a connection; returns it and how many bytes of ``first`` it already sent."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(timeout)
        info = ConnInfo()
        try:
            if self.tfo:
                # connect() returns at once and the first write leaves with the SYN:
                # with a cached cookie the request rides on it (RFC 7413 §3), without
                # one the kernel asks for a cookie and sends the data after the handshake.
                sock.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1)
                sock.connect(addr)
                sock.sendall(first)
                sent = len(first)
            else:
                sock.connect(addr)
                sent = 0
        except BaseException:
            sock.close()
            raise
        info.phases["connected"] = time.perf_counter()
        return PlainConn(sock, info), sent

    def listen(self, sock: socket.socket) -> None:
        if self.tfo:
            sock.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN, TFO_QUEUE)

    def accept(self, sock: socket.socket) -> PlainConn:
        return PlainConn(sock, ConnInfo())


TRANSPORTS: dict[str, Any] = {
    "plain": PlainTransport("plain", description="plain kernel TCP"),
    "plain-tfo": PlainTransport(
        "plain-tfo", tfo=True, description="plain TCP, request in the SYN (TCP Fast Open)"
    ),
}


def get_transport(name: str) -> Any:
    if name not in TRANSPORTS:
        raise ConfigError(f"unknown protocol {name!r}", f"choose from {', '.join(TRANSPORTS)}")
    return TRANSPORTS[name]
