"""The TLS protocol arms of the workload apps, the probe and the experiments (registered at import).

One engine (testbed/teps/tls, TLS 1.3 through OpenSSL) behind every arm; the arms differ in how
it reaches the wire and in the variant:

ENO arms -- TCP-use-TLS, negotiated by TCP-ENO as TEP 0x30 (non-standard: no IANA codepoint):
    tls           draft-ietf-tcpinc-use-tls-00 profile: a full handshake on every connection.
    tls-resume    PSK resumption with session tickets (RFC 8446 §2.2). Beyond the draft, which
                  forbids resumption.
    tls-0rtt      resumption plus the request as 0-RTT early data (RFC 8446 §2.3, §4.2.10); the
                  server answers at 0.5-RTT. Beyond the draft.
Non-ENO arms -- "ordinary TLS 1.3 over TCP without ENO" (what HTTPS does): the same engine in
plain mode (no ENO transcript in the session ID) over a plain kernel TCP socket:
    tls-noeno, tls-noeno-resume, tls-noeno-0rtt, and each with ``-tfo``: TCP Fast Open, the
    ClientHello (and any early data) written through TCP_FASTOPEN_CONNECT so it rides on the
    SYN once the client holds a cookie (RFC 7413 §3; the first connection fetches the cookie).
Compatibility-mode-off arms -- ``tls-nocompat``, ``tls-noeno-nocompat``: as ``tls`` and
    ``tls-noeno`` without middlebox compatibility mode (RFC 8446 §D.4). OpenSSL can switch that
    mode off only through the process configuration, so these arms exist only in processes
    started with an OPENSSL_CONF whose system_default section says
    ``Options = -MiddleboxCompat`` (both hosts' processes inherit it from the CLI), e.g.
    ``OPENSSL_CONF=nocompat.cnf tcpinc probe --proto tls-noeno-nocompat``.

``-resume`` and ``-0rtt`` arms: the first connection of a client process is a full handshake
that fetches a ticket; each later one offers the newest ticket (a ticket is used once, RFC 8446
§C.4). Records say ``resumed`` and ``early_data_accepted``, so analyses keep only resumed
connections of these arms; ``variant_label`` names what the arm is, including "beyond the
draft" where that applies.

Per-host state: each server process (one per host and workload run) keeps one
``ServerIdentity`` per server profile for its whole life -- the key, and the SSL_CTX whose ticket
keys and single-use cache make resumption and 0-RTT anti-replay work (RFC 8446 §8.1). Each
client process keeps one ``TlsSessionCache``, keyed by the server's address.

Failures: a TLS handshake or record failure resets the connection and raises the stream layer's
``TepFailure`` (``IntegrityFailure`` for a bad record MAC); nothing unauthenticated reaches the
application, and after ENO chose TLS nothing is ever sent in clear.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL

from testbed import stream as eno_stream
from testbed.apps.registry import (
    TCP_FASTOPEN,
    TCP_FASTOPEN_CONNECT,
    TFO_QUEUE,
    ConnInfo,
    conn_info,
    register_transport,
)
from testbed.eno.control import Result
from testbed.errors import ConfigError
from testbed.tepio import TepDriver
from testbed.teps import tls
from testbed.teps.base import IntegrityError, Role, TepContext, TepError, TepSpec
from testbed.teps.tls import _ossl
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

    def close(self) -> None:
        if self.client and self.stream.info.early_data_accepted:
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


# --- ENO arms ---------------------------------------------------------------------------------


@dataclass
class TlsEnoTransport:
    """TCP-ENO through the host's hook, then TLS as TEP 0x30 (testbed/stream.py)."""

    arm: TlsArm
    policy: str = "opportunistic"
    uses_eno: bool = True
    listener: eno_stream.Listener | None = None

    @property
    def name(self) -> str:
        return self.arm.name

    @property
    def description(self) -> str:
        return self.arm.variant_label

    def config(
        self, *, server: bool, first: bytes = b"", timeout: float = HANDSHAKE_TIMEOUT
    ) -> eno_stream.StreamConfig:
        return eno_stream.StreamConfig(
            policy=eno_stream.Policy(self.policy), teps=(TEP_NAME,),
            providers={TEP_NAME: TlsProvider(self.arm, first, with_finished=not server)},
            early_handoff=server and self.arm.early_data, handshake_timeout=timeout,
        )

    def connect(self, addr: Addr, timeout: float, first: bytes) -> tuple[TlsConn, int]:
        """Open a stream; the request goes to TLS (0-RTT arms: early data when a ticket
        allows it; the others: in the flight of the client's Finished). Nothing rides on the
        SYN: ENO bans SYN data for this TEP (RFC 8547 §4.7)."""
        config = self.config(server=False, first=first, timeout=timeout)
        stream = eno_stream.connect(addr, config, timeout=timeout)
        # After a fallback the stream is plain TCP and the request is still to be sent.
        taken = stream.info.tep == TEP_NAME
        conn = TlsConn(stream, self.arm, client=True, request_in_tls=bool(first) and taken)
        return conn, len(first) if taken else 0

    def listen(self, sock: socket.socket) -> None:
        server_identity(self.arm.server_profile)  # key and certificate before the first SYN
        self.listener = eno_stream.Listener(sock, self.config(server=True))

    def accept(self, sock: socket.socket, addr: Addr | None = None) -> TlsConn:
        if self.listener is None:
            raise ConfigError(f"{self.arm.name}: accept before listen")
        return TlsConn(self.listener.wrap(sock, addr), self.arm, client=False)


# --- non-ENO arms -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsPlainTransport:
    """Ordinary TLS 1.3 over a plain kernel TCP socket, optionally with TCP Fast Open."""

    arm: TlsArm
    uses_eno: bool = False
    session_ids: bool = True  # the workload collects the server's view (session_id_peer)

    @property
    def name(self) -> str:
        return self.arm.name

    @property
    def description(self) -> str:
        return self.arm.variant_label

    def connect(self, addr: Addr, timeout: float, first: bytes) -> tuple[TlsConn, int]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        info = _plain_info()
        options = self.arm.client_options(addr, first, with_finished=True)
        made: list[TepDriver] = []

        def prepare() -> None:
            # The TLS client and its ClientHello do not depend on the TCP connection: they
            # are made while the SYN is on its way, not after the SYN-ACK.
            made.append(prepare_tls(sock, Role.A, options))
            made[0].start()

        try:
            if self.arm.tfo:
                # connect() returns at once; the ClientHello written by the handshake below
                # leaves with the SYN when a cookie is cached (RFC 7413 §3).
                prepare()
                sock.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1)
                sock.settimeout(timeout)
                sock.connect(addr)
            else:
                connect_overlapped(sock, addr, timeout, prepare)
        except TepError as exc:
            sock.close()
            raise eno_stream.TepFailure(f"{TEP_NAME} (no ENO) client setup failed: {exc}") \
                from exc
        except BaseException:
            sock.close()
            raise
        info.phases["tcp_connected"] = time.perf_counter()
        stream = run_tls(sock, Role.A, options, info, timeout, early_handoff=False,
                         driver=made[0])
        return TlsConn(stream, self.arm, client=True, request_in_tls=bool(first)), len(first)

    def listen(self, sock: socket.socket) -> None:
        server_identity(self.arm.server_profile)  # key and certificate before the first SYN
        if self.arm.tfo:
            sock.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN, TFO_QUEUE)

    def accept(self, sock: socket.socket, addr: Addr | None = None) -> TlsConn:
        info = _plain_info()
        info.phases["tcp_connected"] = time.perf_counter()
        stream = run_tls(sock, Role.B, self.arm.server_options(), info, HANDSHAKE_TIMEOUT,
                         early_handoff=self.arm.early_data)
        return TlsConn(stream, self.arm, client=False)


def _plain_info() -> eno_stream.StreamInfo:
    # Policy "off": this connection never offers ENO.
    return eno_stream.StreamInfo(policy=eno_stream.Policy.OFF.value, tep=TEP_NAME,
                                 tep_label=NOENO_LABEL)


def prepare_tls(sock: socket.socket, role: Role, options: dict[str, Any]) -> TepDriver:
    """The TLS core (no ENO: empty transcript) and its driver for ``sock``."""
    return TepDriver(sock, tls.make_core(TepContext(role=role, options=options,
                                                    transcript=b"")))


def connect_overlapped(sock: socket.socket, addr: Addr, timeout: float,
                       meanwhile: Callable[[], None]) -> None:
    """connect() that runs ``meanwhile`` while the SYN is on its way; one blocking wait for
    the handshake's end, no polling. Leaves ``sock`` blocking with ``timeout``."""
    sock.setblocking(False)
    err = sock.connect_ex(addr)
    if err not in (0, errno.EINPROGRESS):
        raise OSError(err, f"connect to {addr[0]}:{addr[1]}: {os.strerror(err)}")
    meanwhile()
    if err == errno.EINPROGRESS:
        poller = select.poll()  # not select(): descriptors above 1023 are fine
        poller.register(sock, select.POLLOUT)
        if not poller.poll(timeout * 1e3):
            raise TimeoutError(f"connect to {addr[0]}:{addr[1]} timed out after {timeout} s")
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, f"connect to {addr[0]}:{addr[1]}: {os.strerror(err)}")
    sock.settimeout(timeout)


def run_tls(
    sock: socket.socket, role: Role, options: dict[str, Any], info: eno_stream.StreamInfo,
    timeout: float, *, early_handoff: bool, driver: TepDriver | None = None,
) -> eno_stream.Stream:
    """TLS handshake on a connected socket without ENO (with ``driver``, the one
    ``prepare_tls`` made); on failure reset and raise."""
    try:
        driver = driver or prepare_tls(sock, role, options)
        run = driver.run_until_data if early_handoff else driver.run_handshake
        done = run(timeout)
    except (TepError, OSError) as exc:
        port = _local_port(sock)
        eno_stream.reset(sock)
        kind = (eno_stream.IntegrityFailure if isinstance(exc, IntegrityError)
                else eno_stream.TepFailure)
        failure = kind(f"{TEP_NAME} (no ENO) handshake failed: {exc}")
        failure.local_port = port
        raise failure from exc
    if done is not None:
        eno_stream.note_handshake(info, done)
    info.encrypted = True
    return eno_stream.Stream(sock, info, driver)


def _local_port(sock: socket.socket) -> int | None:
    try:
        return int(sock.getsockname()[1])
    except OSError:
        return None


# --- registration -----------------------------------------------------------------------------


def _arms() -> list[TlsArm]:
    arms = [
        TlsArm(name="tls", eno=True, variant_label=DRAFT_LABEL),
        TlsArm(name="tls-resume", eno=True, resume=True,
               variant_label=f"TCP-use-TLS + PSK resumption (TEP 0x30, non-standard; {BEYOND})"),
        TlsArm(name="tls-0rtt", eno=True, early_data=True,
               variant_label=f"TCP-use-TLS + 0-RTT early data (TEP 0x30, non-standard; "
                             f"{BEYOND})"),
    ]
    for tfo in (False, True):
        suffix, tfo_note = ("-tfo", " + TCP Fast Open") if tfo else ("", "")
        arms += [
            TlsArm(name=f"tls-noeno{suffix}", eno=False, tfo=tfo,
                   variant_label=f"{NOENO_LABEL}{tfo_note}"),
            TlsArm(name=f"tls-noeno-resume{suffix}", eno=False, resume=True, tfo=tfo,
                   variant_label=f"{NOENO_LABEL}, PSK resumption{tfo_note}"),
            TlsArm(name=f"tls-noeno-0rtt{suffix}", eno=False, early_data=True, tfo=tfo,
                   variant_label=f"{NOENO_LABEL}, 0-RTT early data{tfo_note}"),
        ]
    if compat_off_available():
        arms += [
            TlsArm(name="tls-nocompat", eno=True, compat=False,
                   variant_label=f"{DRAFT_LABEL}, middlebox compatibility mode off"),
            TlsArm(name="tls-noeno-nocompat", eno=False, compat=False,
                   variant_label=f"{NOENO_LABEL}, middlebox compatibility mode off"),
        ]
    return arms


def compat_off_available() -> bool:
    """Whether this process's OpenSSL configuration lets the engine drop compatibility mode."""
    if "OPENSSL_CONF" not in os.environ:
        return False  # the common case, decided without loading OpenSSL
    return not _ossl.compat_default_on()


def _register() -> None:
    tls.register_all()
    for arm in _arms():
        if arm.eno:
            def factory(policy: str, arm: TlsArm = arm) -> TlsEnoTransport:
                return TlsEnoTransport(arm, policy=policy)

            register_transport(arm.name, factory("opportunistic"), factory)
        else:
            register_transport(arm.name, TlsPlainTransport(arm))


_register()
