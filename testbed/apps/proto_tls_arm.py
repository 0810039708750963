"""The TLS arms' description, per-process state and connection (testbed/apps/proto_tls.py
describes the arms and registers them)."""

from __future__ import annotations

import functools
import logging
import socket
import threading
from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL

from testbed import stream as eno_stream
from testbed.apps.registry import ConnInfo, conn_info
from testbed.eno.control import Result
from testbed.errors import ConfigError
from testbed.teps import tls
from testbed.teps.base import Role, TepSpec
from testbed.teps.tls.constants import TEP_NAME

_log = logging.getLogger(__name__)
Addr = tuple[str, int]

HANDSHAKE_TIMEOUT = 10.0  # server side: how long an accepted connection may take to set up
CLOSE_WAIT = 2.0  # seconds a client waits for the server's close_notify after accepted 0-RTT
_READ = 65536

DRAFT_LABEL = "TCP-use-TLS, draft-ietf-tcpinc-use-tls-00 profile, TEP 0x30 (non-standard)"
BEYOND = "beyond draft-ietf-tcpinc-use-tls"
NOENO_LABEL = "ordinary TLS 1.3 over TCP without ENO"


@dataclass(frozen=True, kw_only=True)
class TlsArm:
    """One protocol arm: how the engine reaches the wire and which TLS variant it runs."""

    name: str
    eno: bool
    resume: bool = False
    early_data: bool = False  # implies resumption: 0-RTT rides a ticket's PSK
    tfo: bool = False
    compat: bool = True  # middlebox compatibility mode (RFC 8446 §D.4)
    variant_label: str = ""

    @property
    def resumes(self) -> bool:
        return self.resume or self.early_data

    @property
    def server_profile(self) -> str:
        return "0rtt" if self.early_data else "resume" if self.resume else "draft"

    def client_options(self, peer: Addr, first: bytes, *,
                       with_finished: bool = False) -> dict[str, Any]:
        """``TepContext.options`` of the TLS client (testbed/teps/tls/core.py lists them).
        ``with_finished``: arms without 0-RTT send ``first`` in the flight of the client's
        Finished (``first_data``), as an HTTPS client writes its request behind it."""
        options: dict[str, Any] = {"mode": "eno" if self.eno else "plain"}
        if not self.compat:
            options["middlebox_compat"] = False
        if self.resumes:
            options["session_cache"] = client_cache()
            options["session_peer"] = f"{peer[0]}:{peer[1]}"
        if self.early_data and first:
            # Sent as 0-RTT data if the offered ticket allows it, else after the handshake.
            options["early_data"] = first
        elif with_finished and first:
            options["first_data"] = first
        return options

    def server_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "mode": "eno" if self.eno else "plain",
            "server_identity": server_identity(self.server_profile),
        }
        if not self.compat:
            options["middlebox_compat"] = False
        if self.early_data:
            options["half_rtt_data"] = True  # answer 0-RTT requests before the client's Finished
        return options


# --- per-process state ------------------------------------------------------------------------


class _SharedCache(tls.TlsSessionCache):
    """A ticket cache the client's concurrent connections (``--concurrency``) may share."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def put(self, peer: str, session: SSL.Session) -> None:
        with self._lock:
            super().put(peer, session)

    def take(self, peer: str) -> SSL.Session | None:
        with self._lock:
            return super().take(peer)


@functools.lru_cache(maxsize=1)
def client_cache() -> tls.TlsSessionCache:
    """The client process's tickets, one cache for all its connections."""
    return _SharedCache()


@functools.cache
def server_identity(profile: str) -> tls.ServerIdentity:
    """This host's server identity for a profile, made once and kept for the process."""
    if profile == "draft":
        return tls.ServerIdentity()  # use-tls-00: no resumption
    if profile == "resume":
        return tls.ServerIdentity(resumption=True)
    if profile == "0rtt":
        return tls.ServerIdentity.with_early_data()
    if profile == "0rtt-noantireplay":  # tcpinc bench replay only (testbed/apps/proto_syn.py)
        return tls.ServerIdentity.with_early_data(anti_replay=False)
    raise ConfigError(f"unknown TLS server profile {profile!r}")


@dataclass(frozen=True)
class TlsProvider:
    """The TLS TEP's per-host state for one ENO arm (``testbed.stream.TepProvider``)."""

    arm: TlsArm
    early_data: bytes = b""  # the client's first request (0-RTT, or behind the Finished)
    with_finished: bool = False  # arms without 0-RTT: send it with the client's Finished

    def suboption_data(self, spec: TepSpec, *, active: bool, peer: Addr | None) -> bytes | None:
        return None  # use-tls-00: a one-byte suboption (v = 0) in both SYNs

    def context_options(
        self, spec: TepSpec, *, role: Role, peer: Addr, result: Result
    ) -> dict[str, Any]:
        # ENO role A is the TLS client (use-tls-00).
        if role is Role.A:
            return self.arm.client_options(peer, self.early_data,
                                           with_finished=self.with_finished)
        return self.arm.server_options()

    def prepare(self, spec: TepSpec) -> None:
        """Server: make a later connection's SSL object while waiting for it (identity.py)."""
        server_identity(self.arm.server_profile).prepare()

    def early_options(self, spec: TepSpec, *, peer: Addr) -> dict[str, Any]:
        """The client's options before the ENO result (testbed/earlytep.py): the ClientHello
        depends on none of it; the transcript enters only the session ID's exporter context."""
        return self.arm.client_options(peer, self.early_data, with_finished=self.with_finished)


# --- connections ------------------------------------------------------------------------------


class TlsConn:
    """A TLS stream behind the workload's connection interface; ``info`` is read live."""

    def __init__(self, stream: eno_stream.Stream, arm: TlsArm, *, client: bool,
                 request_in_tls: bool = False) -> None:
        self.stream = stream
        self.arm = arm
        self.client = client
        self.request_in_tls = request_in_tls  # the TLS core sent the client's request

    @property
    def info(self) -> ConnInfo:
        """The probe keys now (a server's session ID may follow its setup, see tepio)."""
        raw = self.stream.info
        info = conn_info(raw)
        if raw.tep == TEP_NAME:
            info.extras = {
                "variant_label": self.arm.variant_label,
                "resumed": raw.resumed,
                "early_data_accepted": raw.early_data_accepted,
            }
            if raw.early_data_accepted:
                # The request left with the ClientHello, when the TLS core started.
                started = raw.phases.get("eno_result", raw.phases.get("tcp_connected"))
                if started is not None:
                    info.phases["request_sent"] = started
            elif self.request_in_tls:
                self._request_behind_finished(info)
        return info

    def _request_behind_finished(self, info: ConnInfo) -> None:
        """The request left with the client's Finished: after the server's first bytes
        were read (the lower bound the capture analysis finds it from), and by the end of
        the handshake."""
        driver = self.stream.tep_driver
        if driver is not None and driver.first_read_at is not None:
            info.phases["request_from"] = driver.first_read_at
        done = self.stream.info.phases.get("tep_handshake_done")
        if done is not None:
            info.phases["request_sent"] = done

    def sendall(self, data: bytes) -> None:
        self.stream.sendall(data)

    def recv(self, size: int) -> bytes:
        return self.stream.recv(size)

    @property
    def close_before_next(self) -> bool:
        """After accepted 0-RTT the close waits for the ticket the next connection offers
        (``_close_and_wait``): the client must not start that one before (apps/client.py)."""
        return self.client and bool(self.stream.info.early_data_accepted)

    def close(self) -> None:
        if self.close_before_next:
            self._close_and_wait()
        self.stream.close()

    def _close_and_wait(self) -> None:
        # RFC 8446 §6.1 lets the closing side wait for the peer's close_notify. After accepted
        # 0-RTT the server's NewSessionTicket (§4.6.1) follows our Finished, a round trip
        # after the response: waiting for it keeps the next connection resumable (tickets are
        # single-use), and means the server has our Finished, hence its session ID.
        try:
            self.stream.shutdown(socket.SHUT_WR)
            self.stream.settimeout(CLOSE_WAIT)
            while self.stream.recv(_READ):
                continue  # the response was read in full: nothing more is expected
        except (OSError, eno_stream.StreamError) as exc:
            _log.debug("%s: no clean close from the server: %s", self.arm.name, exc)

    @property
    def local_port(self) -> int:
        return self.stream.local_port

