"""The transport registry: the connection types every arm builds on, and the table of arms.

The arm modules (proto_tcpcrypt.py, proto_tls.py, proto_syn.py) import their base types and
``register_transport`` from here, never from testbed/apps/transport.py: importing that module
loads every arm, and an arm module that imported it would be asked, half-loaded, for names it
has not defined yet (proto_syn.py derives from proto_tcpcrypt.py's provider).

How the workload apps open connections for each protocol name.

Every protocol the probe and the experiments know is a ``Transport`` here: it
opens a client connection (optionally carrying the first request bytes, as TCP
Fast Open does) and wraps an accepted server connection. Each connection
reports the stable probe keys (outcome, tep, fallback_reason, session IDs) and
its per-phase timestamps.

ENO protocols (``uses_eno``) go through testbed/stream.py and need the ENO hook
running on both hosts (the workload starts it). Outcome values: ``encrypted``
when a TEP that protects data was negotiated, ``plaintext`` otherwise -- after a
fallback, and also for the test-only TEP ``eno-test``, which negotiates through
ENO but protects nothing (``eno`` says "negotiated", ``tep_label`` says "TEST
ONLY - not encryption"); ``failed`` is set by the client when a connection did
not complete.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import Any

from testbed import stream as eno_stream
from testbed.errors import ConfigError
from testbed.teps import enotest

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
    # ENO protocols only: the ENO result, the TEP's label (e.g. "TEST ONLY - not encryption"),
    # the ENO role (A or B) and the policy the connection ran under.
    eno: str | None = None
    tep_label: str | None = None
    role: str | None = None
    policy: str | None = None
    # Arm-specific keys the client copies into its record (e.g. TLS: resumed, variant_label).
    extras: dict[str, Any] = field(default_factory=dict)


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
    uses_eno: bool = False

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

    def accept(self, sock: socket.socket, addr: tuple[str, int] | None = None) -> PlainConn:
        return PlainConn(sock, ConnInfo())


def conn_info(info: eno_stream.StreamInfo) -> ConnInfo:
    """The probe keys of a stream (see the module docstring for ``outcome``)."""
    phases = dict(info.phases)
    if "tcp_connected" in phases:
        phases["connected"] = phases["tcp_connected"]
    return ConnInfo(
        outcome="encrypted" if info.encrypted else "plaintext", tep=info.tep,
        fallback_reason=info.fallback_reason,
        session_id=info.session_id.hex() if info.session_id else None, phases=phases,
        eno=info.eno, tep_label=info.tep_label, role=info.role, policy=info.policy,
    )


class EnoConn:
    """A testbed.stream.Stream behind the workload's connection interface."""

    def __init__(self, stream: eno_stream.Stream) -> None:
        self.stream = stream
        self.info = conn_info(stream.info)

    def sendall(self, data: bytes) -> None:
        self.stream.sendall(data)

    def recv(self, size: int) -> bytes:
        return self.stream.recv(size)

    def close(self) -> None:
        self.stream.close()

    @property
    def local_port(self) -> int:
        return self.stream.local_port


@dataclass
class EnoTransport:
    """TCP-ENO through the host's hook, then the negotiated TEP (testbed/stream.py)."""

    name: str
    teps: tuple[str, ...]
    description: str = ""
    policy: str = "opportunistic"
    uses_eno: bool = True
    listener: eno_stream.Listener | None = None

    def config(self) -> eno_stream.StreamConfig:
        return eno_stream.StreamConfig(policy=eno_stream.Policy(self.policy), teps=self.teps)

    def connect(self, addr: tuple[str, int], timeout: float, first: bytes) -> tuple[EnoConn, int]:
        """Open a stream; nothing of ``first`` rides on the SYN (RFC 8547 §4.7)."""
        return EnoConn(eno_stream.connect(addr, self.config(), timeout=timeout)), 0

    def listen(self, sock: socket.socket) -> None:
        self.listener = eno_stream.Listener(sock, self.config())

    def prepare(self) -> None:
        """Between connections: what the next accepted one needs (testbed/stream.py)."""
        if self.listener is not None:
            self.listener.prepare()

    def accept(self, sock: socket.socket, addr: tuple[str, int] | None = None) -> EnoConn:
        if self.listener is None:
            raise ConfigError("EnoTransport.accept before listen")
        return EnoConn(self.listener.wrap(sock, addr))


def _eno_test(policy: str = "opportunistic") -> EnoTransport:
    return EnoTransport(
        "eno-test", (enotest.TEP_NAME,), policy=policy,
        description=f"TCP-ENO with the test-only TEP 0x20 ({enotest.TEST_LABEL})",
    )


TRANSPORTS: dict[str, Any] = {
    "plain": PlainTransport("plain", description="plain kernel TCP"),
    "plain-tfo": PlainTransport(
        "plain-tfo", tfo=True, description="plain TCP, request in the SYN (TCP Fast Open)"
    ),
    "eno-test": _eno_test(),
}
# ENO protocols are built per use (they carry the policy and a listener registration).
_ENO_FACTORIES: dict[str, Any] = {"eno-test": _eno_test}
POLICIES = tuple(p.value for p in eno_stream.Policy)


def register_transport(name: str, transport: Any, eno_factory: Any = None) -> None:
    """Add a protocol arm; ENO arms also give a factory taking the policy name."""
    if name in TRANSPORTS:
        raise ValueError(f"protocol {name!r} already registered")
    TRANSPORTS[name] = transport
    if eno_factory is not None:
        _ENO_FACTORIES[name] = eno_factory


def get_transport(name: str, policy: str | None = None) -> Any:
    if name not in TRANSPORTS:
        raise ConfigError(f"unknown protocol {name!r}", f"choose from {', '.join(TRANSPORTS)}")
    if name not in _ENO_FACTORIES:
        if policy is not None:
            raise ConfigError(f"--policy applies to ENO protocols, not {name!r}",
                              f"use one of {', '.join(_ENO_FACTORIES)}")
        return TRANSPORTS[name]
    if policy is not None and policy not in POLICIES:
        raise ConfigError(f"unknown policy {policy!r}", f"choose from {', '.join(POLICIES)}")
    return _ENO_FACTORIES[name](policy or "opportunistic")
