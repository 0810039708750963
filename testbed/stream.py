"""What an application uses: ``connect()`` / ``listen()`` / ``accept()`` -> a ``Stream``.

Theory of operation
-------------------
A stream is a kernel TCP socket plus what TCP-ENO and the negotiated TEP made of it:

1. Before the SYN, the stream tells the host's ENO hook (testbed/eno/hook.py, over the
   control channel of testbed/eno/control.py) which TEPs it offers on this local port
   (``announce``) or listener port (``listen``), with the §4.2 bits and, under the
   ``required`` policy, the mandatory-encryption mode of RFC 8547 §4.7.
2. The kernel does the TCP handshake; the hook adds and checks ENO on its segments.
3. The stream asks the hook for the result (negotiated TEP, role, transcript, or the
   fallback reason) and records the phase times ``tcp_connected`` and ``eno_result``.
4. Negotiated: the TEP's sans-IO core is created with the role and transcript (RFC 8547
   §4.8) and driven over the socket (testbed/tepio.py) until its handshake is done
   (``tep_handshake_done``); from then on only what the core authenticates reaches the
   application. Fallback: the socket is used as plain TCP and the stream says why.

Policies: ``off`` never offers ENO; ``opportunistic`` falls back to plain TCP and says so
(``encrypted`` False, ``fallback_reason``); ``required`` turns any fallback into
``EncryptionRequiredError`` after resetting the connection, before one application byte is
sent, on both sides. TEP failures (integrity, protocol, truncation) reset the connection and
raise ``TepFailure``; nothing unauthenticated is delivered. A passive end whose hook put ENO in
the SYN-ACK but never judged the first ACK segment (the hook missed it) resets the connection
under every policy (``UndecidedEnoError``): the peer may have enabled encryption (§4.6).

One RFC 8547 gap is handled here. If a path strips ENO from A's third segment only, B falls
back (§4.6 rule 1: its first ACK segment lacked ENO) while A has sent and received ACK
segments with ENO and enables encryption. A keeps ENO on its next segments (§4.6), which B's
hook records. B's stream checks that record before handing the first received bytes to the
application and, if A believes encryption is on, resets the connection instead of delivering
A's TEP messages as application data (``SplitNegotiationError``). An opportunistic A whose
TEP handshake is refused that way (reset or closed before any TEP byte arrived) reconnects once
without ENO and reports ``fallback_reason = "peer_refused_tep"``; a required A fails.

Paths hostile to the option itself: an opportunistic A lets its hook drop ENO from the third
SYN retransmission (the §4.6 exception; ``syn_retransmission``, StreamConfig
``syn_retries_with_eno``), and reconnects once without ENO when its SYN with ENO is answered
by a RST (``syn_reset``). A required A does neither.

The configuration types (``Policy``, ``StreamConfig``, ``StreamInfo``, the errors,
``TepProvider``) live in testbed/streamconfig.py and are re-exported here.

Per-host TEP state (a TLS ``ServerIdentity``, a tcpcrypt ``ResumptionCache``) comes from
``TepProvider`` objects registered per TEP name (``register_provider``) or given per stream
(``StreamConfig.providers``); static per-TEP options come from ``StreamConfig.tep_options``.
A listener's suboption data is fixed at registration; a passive opener answers resumption
offers (RFC 8548 §3.5) with single-use answers its provider pushed to the hook beforehand
(``HookClient.answer``, testbed/eno/engine.py), so no control round trip sits on the SYN's
path. An active opener's provider may say, per offer, what the peer's answer must begin with
(``expected_peer_data``); the hook then ignores a mismatching answer (§3.5). A provider that
raises ``TepError`` for a connection (e.g. the secret an answer named is gone) gets the
connection reset, as a failed TEP handshake would.

The announcement is a one-way message (no round trip before the SYN); ``eno_announced`` is
its phase time. ``Stream.session_id`` raises ``NoSessionIdError`` while there is none (RFC 8547
§5.1); ``StreamInfo.session_id`` is the same value or None, for records.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from testbed.earlytep import EarlyTep, connect_preparing
from testbed.eno.bpf import datapath
from testbed.eno.control import HookClient, HookUnavailableError, Result, Settings
from testbed.streamconfig import (  # re-exported: the stream API
    UNENCRYPTED_TEPS,
    Addr,
    EncryptionRequiredError,
    IntegrityFailure,
    NoSessionIdError,
    PeerRefusedTep,
    Policy,
    SplitNegotiationError,
    StreamConfig,
    StreamError,
    StreamInfo,
    TepFailure,
    TepProvider,
    UndecidedEnoError,
    note_handshake,
    register_provider,
)
from testbed.tepio import TepDriver
from testbed.teps import base
from testbed.teps.base import Role, TepContext, TepError

__all__ = [
    "UNENCRYPTED_TEPS", "Addr", "EncryptionRequiredError", "IntegrityFailure", "Listener",
    "NoSessionIdError", "PeerRefusedTep", "Policy", "SplitNegotiationError", "Stream",
    "StreamConfig", "StreamError", "StreamInfo", "TepFailure", "TepProvider",
    "UndecidedEnoError", "connect", "establish", "listen", "note_handshake",
    "register_provider", "reset",
]

_local = threading.local()


def _hook(name: str) -> HookClient:
    """A per-thread control connection (connecting costs a syscall round per stream)."""
    clients: dict[str, HookClient] = _local.__dict__.setdefault("clients", {})
    client = clients.get(name)
    if client is None:
        client = clients[name] = HookClient(name)
    return client


def _forget_hook(name: str) -> None:
    client = _local.__dict__.get("clients", {}).pop(name, None)
    if client is not None:
        client.close()


def reset(sock: socket.socket) -> None:
    """Abort the connection with a RST (SO_LINGER 0) instead of a FIN."""
    # OSError: the peer already reset the connection; close() is then all there is to do.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


CLOSE_DRAIN_S = 2.0  # how long close() waits for the peer's end of stream
_DRAIN_READ = 1 << 16


class Stream:
    """A connected stream: plain TCP after fallback, or TEP-protected."""

    def __init__(self, sock: socket.socket, info: StreamInfo, driver: TepDriver | None = None,
                 split_check: Any = None) -> None:
        self.sock = sock
        self.info = info
        self._driver = driver
        self._split_check = split_check  # callable -> bool, run before the first delivery
        self._closed_write = False

    # -- what the stream says -----------------------------------------------------------

    @property
    def encrypted(self) -> bool:
        return self.info.encrypted

    @property
    def tep(self) -> str | None:
        return self.info.tep

    @property
    def fallback_reason(self) -> str | None:
        return self.info.fallback_reason

    @property
    def session_id(self) -> bytes:
        """RFC 8547 §5.1: the session ID, or an error while there is none."""
        if self.info.session_id is None:
            raise NoSessionIdError(f"no session ID ({self.info.fallback_reason or 'no TEP'})")
        return self.info.session_id

    @property
    def local_port(self) -> int:
        return int(self.sock.getsockname()[1])

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def tep_driver(self) -> TepDriver | None:
        """The TEP driver (None after a fallback), for callers that run their own event loop
        (testbed/transparent/relay.py) and drive its sans-IO core themselves."""
        return self._driver

    @property
    def has_split_check(self) -> bool:
        return self._split_check is not None

    def run_split_check(self) -> None:
        """The split-negotiation check ``recv`` runs first, for event loops (the socket must
        be readable and blocking: it peeks one byte)."""
        if self._split_check is not None:
            self._run_split_check()

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    # -- data ---------------------------------------------------------------------------

    def sendall(self, data: bytes) -> None:
        if self._driver is None:
            self.sock.sendall(data)
            return
        driver = self._driver
        self._guard(lambda: driver.send(data))

    def recv(self, size: int) -> bytes:
        if self._split_check is not None:
            self._run_split_check()
        if self._driver is None:
            return self.sock.recv(size)
        driver = self._driver
        data: bytes = self._guard(lambda: driver.recv(size))
        if self.info.session_id is None:
            done = driver.completed()  # an early handoff's handshake ended in this recv
            if done is not None:
                note_handshake(self.info, done)
        return data

    def _run_split_check(self) -> None:
        check, self._split_check = self._split_check, None
        if not self.sock.recv(1, socket.MSG_PEEK):
            return  # the peer closed without sending: nothing to misinterpret
        if check():
            self.abort()
            raise SplitNegotiationError(
                "ENO was stripped from the peer's first ACK only: the peer enabled encryption "
                "while this end fell back (RFC 8547 §4.6); connection reset"
            )

    def _guard(self, action: Any) -> Any:
        try:
            return action()
        except TepError as exc:
            self.abort()
            kind = IntegrityFailure if isinstance(exc, base.IntegrityError) else TepFailure
            raise kind(f"{self.info.tep}: {exc}") from exc

    def shutdown(self, how: int) -> None:
        if how in (socket.SHUT_WR, socket.SHUT_RDWR) and not self._closed_write:
            self._closed_write = True
            if self._driver is not None:
                driver = self._driver
                self._corked(lambda: self._guard(driver.close_write))
            else:
                self.sock.shutdown(socket.SHUT_WR)
        if how in (socket.SHUT_RD, socket.SHUT_RDWR):
            self.sock.shutdown(socket.SHUT_RD)

    def _corked(self, write_and_fin: Callable[[], object]) -> None:
        """Send the TEP's last frame and the FIN in one segment (TCP_CORK holds the frame
        until the FIN is queued, and the kernel puts a FIN on an unsent tail segment).

        Apart, a peer that reads the frame and the FIN in one batch can acknowledge the FIN
        twice; the first ACK takes the closing end from LAST-ACK to CLOSED, and the kernel
        answers the second with a RST (RFC 9293 §3.10.7.1) on an otherwise clean close."""
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        except OSError:
            write_and_fin()  # the peer is gone: the write reports it
            return
        try:
            write_and_fin()
        finally:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)

    def close(self) -> None:
        """Close gracefully: the TEP's end of stream, then FIN, then read to the peer's end.

        A TEP peer answers our end of stream with its own (TLS close_notify, RFC 8446 §6.1;
        tcpcrypt's FIN after its last frame). Arriving at a socket already closed, those bytes
        make the kernel reset the connection (RFC 9293 §3.10.7.1: data for a closed
        connection is answered with RST), so the stream reads them, and whatever else the
        peer still had in flight (a TLS NewSessionTicket), before it lets go of the socket.
        """
        if self.sock.fileno() < 0:
            return
        # OSError / StreamError: the peer is gone or the TEP failed (the connection was reset);
        # closing the socket is then all that is left to do.
        with contextlib.suppress(OSError, StreamError):
            if self._driver is not None:
                if not self._closed_write:
                    self.shutdown(socket.SHUT_WR)
                self._drain(CLOSE_DRAIN_S)
        if self.sock.fileno() >= 0:
            self.sock.close()

    def _drain(self, limit: float) -> None:
        """Read and drop the peer's remaining bytes until its end of stream, for ``limit``
        seconds at most (a peer that never closes is then left to our close)."""
        driver = self._driver
        assert driver is not None
        deadline = time.monotonic() + limit
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            if not self._guard(lambda: driver.recv(_DRAIN_READ)):
                return

    def abort(self) -> None:
        """Reset the connection (RST)."""
        if self.sock.fileno() >= 0:
            reset(self.sock)


# ---------------------------------------------------------------------------
# Establishing a stream from the hook's result
# ---------------------------------------------------------------------------


def _tcp_socket(timeout: float | None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)
    return sock


def _fail_closed(sock: socket.socket, reason: str, detail: str = "") -> EncryptionRequiredError:
    error = EncryptionRequiredError(reason, detail)
    error.local_port = _port_of(sock)
    reset(sock)
    return error


def _port_of(sock: socket.socket) -> int | None:
    try:
        return int(sock.getsockname()[1])
    except OSError:
        return None


def establish(
    sock: socket.socket, result: Result | None, config: StreamConfig, info: StreamInfo,
    *, active: bool, split_check: Any = None, early: EarlyTep | None = None,
) -> Stream:
    """Turn a connected socket and the hook's result into a stream (or reset and raise)."""
    info.phases["eno_result"] = time.perf_counter()
    required = config.policy is Policy.REQUIRED
    if result is None or result.outcome is None:
        why = "hook_error" if result is not None and result.error else "no_eno_result"
        detail = (result.error or "") if result is not None else ""
        if required:
            raise _fail_closed(sock, why, detail)
        if not active and result is not None and result.state == "synack_sent":
            undecided = UndecidedEnoError(f"ENO sent in the SYN-ACK, no verdict on the first "
                                          f"ACK segment ({result.packets} segments seen)")
            undecided.local_port = _port_of(sock)
            reset(sock)
            raise undecided
        info.fallback_reason, info.detail = why, detail
        return Stream(sock, info)
    info.eno = result.outcome
    if result.outcome == "aborted":
        raise _fail_closed(sock, result.fallback or result.reason or "aborted", result.detail)
    if result.outcome == "fallback":
        if required:
            raise _fail_closed(sock, result.reason or "fallback", result.detail)
        info.fallback_reason, info.detail = result.reason, result.detail
        check = split_check if result.reason == "no_eno_in_ack" and not active else None
        return Stream(sock, info, split_check=check)
    return _start_tep(sock, result, config, info, early)


def _start_tep(
    sock: socket.socket, result: Result, config: StreamConfig, info: StreamInfo,
    early: EarlyTep | None = None,
) -> Stream:
    assert result.tep_id is not None and result.role is not None
    spec = base.by_id(result.tep_id)
    if spec is None:  # the hook negotiated an id this process never offered
        raise _fail_closed(sock, "unknown_tep", f"{result.tep_id:#x}")
    role = Role(result.role)
    info.tep, info.tep_id, info.role = spec.name, spec.tep_id, role.value
    info.tep_label = spec.label or None
    info.transcript = result.transcript_bytes
    info.peer_application_aware = result.peer_a
    if early is not None and early.fits(spec, role, result):
        early.ctx.transcript = info.transcript  # before any key is derived from it (§4.8)
        return _run_tep(sock, config, info, spec, early.driver)
    options: dict[str, Any] = {}
    provider = config.provider(spec.name)
    if provider is not None:
        try:
            options.update(provider.context_options(spec, role=role, peer=result.remote,
                                                    result=result))
        except TepError as exc:  # e.g. a resumption secret gone: no TEP byte sent yet
            refusal = TepFailure(f"{spec.name}: {exc}")
            refusal.local_port = _port_of(sock)
            reset(sock)
            raise refusal from exc
    options.update(config.tep_options.get(spec.name, {}))
    ctx = TepContext(role=role, transcript=info.transcript, random=os.urandom,
                     now=time.monotonic(), peer_suboption_data=result.peer_data_bytes,
                     options=options)
    return _run_tep(sock, config, info, spec, TepDriver(sock, spec.factory(ctx)))


def _run_tep(sock: socket.socket, config: StreamConfig, info: StreamInfo, spec: base.TepSpec,
             driver: TepDriver) -> Stream:
    """The TEP handshake on the negotiated connection (or reset and raise)."""
    try:
        if config.early_handoff:
            done = driver.run_until_data(config.handshake_timeout)
        else:
            done = driver.run_handshake(config.handshake_timeout)
    except (TepError, OSError) as exc:
        raise handshake_failure(sock, driver, spec, exc) from exc
    if done is not None:
        note_handshake(info, done)
        # A core that resumes has its keys at start(), before any event could be read.
        info.resumed = bool(info.resumed or getattr(driver.core, "resumed", False))
    info.encrypted = spec.name not in UNENCRYPTED_TEPS
    return Stream(sock, info, driver)


def connect(
    address: Addr, config: StreamConfig | None = None, *, timeout: float | None = 10.0,
    local_address: Addr | None = None,
) -> Stream:
    """Open a stream to ``address`` under ``config.policy``.

    Opportunistic fallbacks that need a second connection (the stream's
    ``fallback_reason`` says which): the peer refused the negotiated TEP
    (``peer_refused_tep``), or the SYN with ENO was reset (``syn_reset``). The
    required policy raises instead."""
    config = config or StreamConfig()
    if config.policy is Policy.OFF:
        return _plain_connect(address, config, timeout, local_address, "disabled_by_config")
    try:
        return _eno_connect(address, config, timeout, local_address)
    except ConnectionRefusedError as exc:
        if config.policy is Policy.REQUIRED or not config.retry_plain_after_reset:
            raise
        # A RST to our SYN with ENO: a box that rejects unknown options, or a closed port.
        # Opportunistic: one more SYN without ENO tells them apart (RFC 3168 §6.1.1.1 lets
        # an ECN-setup SYN be retried the same way); a closed port refuses it again.
        stream = _plain_connect(address, config, timeout, local_address, "syn_reset")
        stream.info.detail = f"the SYN with ENO was reset ({exc}); reconnected without ENO"
        return stream
    except PeerRefusedTep as exc:
        if config.policy is Policy.REQUIRED:
            # ENO negotiated here, but the peer fell back (or reset): no encryption.
            error = EncryptionRequiredError("peer_refused_tep", str(exc))
            error.local_port = exc.local_port
            raise error from exc
        if not config.retry_plain:
            raise
        stream = _plain_connect(address, config, timeout, local_address, "peer_refused_tep")
        stream.info.detail = str(exc)
        return stream


def _plain_connect(
    address: Addr, config: StreamConfig, timeout: float | None, local_address: Addr | None,
    reason: str,
) -> Stream:
    info = StreamInfo(policy=config.policy.value, fallback_reason=reason)
    sock = _tcp_socket(timeout)
    try:
        if local_address is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(local_address)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    info.phases["tcp_connected"] = time.perf_counter()
    return Stream(sock, info)


def _eno_connect(
    address: Addr, config: StreamConfig, timeout: float | None, local_address: Addr | None
) -> Stream:
    info = StreamInfo(policy=config.policy.value)
    settings = config.settings(active=True, peer=address)
    if not settings.teps:
        if config.policy is Policy.REQUIRED:
            raise EncryptionRequiredError("no_tep_configured")
        return _plain_connect(address, config, timeout, local_address, "no_tep_configured")
    sock = _tcp_socket(timeout)
    try:
        if local_address is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(local_address or ("0.0.0.0", 0))
        host = datapath.current()
        if host is not None:
            return _bpf_connect(host, sock, address, settings, config, info)
        try:
            hook = _hook(config.hook_name)
            hook.announce(sock.getsockname()[1], settings, wait=False)
            info.phases["eno_announced"] = time.perf_counter()
        except HookUnavailableError as exc:
            _forget_hook(config.hook_name)
            if config.policy is Policy.REQUIRED:
                raise EncryptionRequiredError("hook_unavailable", str(exc)) from None
            sock.connect(address)
            info.phases["tcp_connected"] = time.perf_counter()
            info.fallback_reason, info.detail = "hook_unavailable", str(exc)
            return Stream(sock, info)
        try:
            early = connect_preparing(sock, address, config)
        except ConnectionResetError as exc:  # the handshake completed: the hook followed it
            raise _reset_in_connect(_query(config, _local_after_reset(sock), address), sock,
                                    config, exc) from exc
        except OSError:
            _cancel(config.hook_name, sock)  # no SYN used it: a later socket may get the port
            raise
        info.phases["tcp_connected"] = time.perf_counter()
        result = _result(config, sock)
        return establish(sock, result, config, info, active=True, early=early)
    except BaseException:
        if sock.fileno() >= 0:
            sock.close()
        raise


def _bpf_connect(
    host: datapath.BpfHost, sock: socket.socket, address: Addr, settings: Settings,
    config: StreamConfig, info: StreamInfo,
) -> Stream:
    """The bpf datapath: the offer goes into the socket's storage, no round trip at all."""
    try:
        host.offer(sock, settings)
    except datapath.BpfDatapathError as exc:
        raise StreamError(str(exc)) from None
    info.phases["eno_announced"] = time.perf_counter()
    try:
        early = connect_preparing(sock, address, config)
    except ConnectionResetError as exc:
        result = host.result(sock, settings, active=True, remote=address)
        raise _reset_in_connect(result, sock, config, exc) from exc
    info.phases["tcp_connected"] = time.perf_counter()
    result = _agreed(sock, host.result(sock, settings, active=True))
    return establish(sock, result, config, info, active=True, early=early)


def _agreed(sock: socket.socket, result: Result | None) -> Result | None:
    """The bpf datapath's result, unless the kernel did what the pure core would not have
    (testbed/eno/bpf/datapath.py): the two ends may then disagree about encryption, so the
    connection is reset before anything is sent."""
    if result is None or result.error is None or result.outcome is None:
        return result
    error = StreamError(f"{result.error}; connection reset")
    error.local_port = _port_of(sock)
    reset(sock)
    raise error


def _local_after_reset(sock: socket.socket) -> Addr:
    """The connection's local address as the hook keys it (the kernel keeps the source
    address chosen at connect() on a socket the peer reset)."""
    try:
        ip, port = sock.getsockname()[:2]
    except OSError:
        return ("0.0.0.0", 0)
    return (str(ip), int(port))


def _reset_in_connect(
    result: Result | None, sock: socket.socket, config: StreamConfig,
    exc: ConnectionResetError,
) -> Exception:
    """The handshake completed and the peer reset the connection before connect() returned
    (a passive end that judged the first ACK before this process woke up). The datapath's
    result says what happened; the error is the one a slower peer causes."""
    port = _port_of(sock)
    error: StreamError
    if result is None or result.outcome is None:
        return exc
    if result.outcome == "negotiated":  # B fell back or failed: it refused the TEP
        error = PeerRefusedTep(f"peer reset the connection before the TEP handshake: {exc}")
    elif config.policy is Policy.REQUIRED:
        error = EncryptionRequiredError(result.fallback or result.reason or "aborted",
                                        result.detail)
    else:
        return exc
    error.local_port = port
    return error


def _cancel(name: str, sock: socket.socket) -> None:
    # The announcement stays if the hook is gone, but then no SYN is rewritten anyway.
    with contextlib.suppress(HookUnavailableError, OSError):
        _hook(name).cancel(sock.getsockname()[1])


def _result(config: StreamConfig, sock: socket.socket) -> Result | None:
    return _query(config, sock.getsockname(), sock.getpeername())



def handshake_failure(sock: socket.socket, driver: TepDriver, spec: base.TepSpec,
                      exc: Exception) -> TepFailure:
    """Reset a connection whose TEP handshake failed and name the failure: refused (nothing
    received, then EOF or reset), tampered (integrity), or any other TEP error."""
    refused = driver.received == 0 and isinstance(exc, base.TruncationError | ConnectionError)
    port = _port_of(sock)
    reset(sock)
    failure: TepFailure
    if refused:
        failure = PeerRefusedTep(f"{spec.name}: peer refused the TEP handshake: {exc}")
    elif isinstance(exc, base.IntegrityError):
        failure = IntegrityFailure(f"{spec.name} handshake failed: {exc}")
    else:
        failure = TepFailure(f"{spec.name} handshake failed: {exc}")
    failure.local_port = port
    return failure

def _query(config: StreamConfig, local: Addr, remote: Addr) -> Result | None:
    try:
        return _hook(config.hook_name).result(local, remote, wait=config.eno_wait)
    except HookUnavailableError:
        _forget_hook(config.hook_name)
        return None


class Listener:
    """A listening socket registered with the hook for as long as it lives."""

    def __init__(self, sock: socket.socket, config: StreamConfig | None = None) -> None:
        self.sock = sock
        self.config = config or StreamConfig()
        self._registration: HookClient | None = None
        self._bpf: tuple[datapath.BpfHost, Settings] | None = None
        self.unavailable: str | None = None
        if self.config.policy is not Policy.OFF:
            self._register()

    def _register(self) -> None:
        settings = self.config.settings(active=False, peer=None)
        if not settings.teps:
            if self.config.policy is Policy.REQUIRED:
                raise EncryptionRequiredError("no_tep_configured")
            self.unavailable = "no_tep_configured"
            return
        host = datapath.current()
        if host is not None:
            try:
                host.listen(self.sock.getsockname()[1], settings)
            except datapath.BpfDatapathError as exc:
                raise StreamError(str(exc)) from None
            self._bpf = (host, settings)
            return
        try:
            self._registration = HookClient(self.config.hook_name)
            self._registration.listen(self.sock.getsockname()[1], settings)
        except HookUnavailableError as exc:
            if self.config.policy is Policy.REQUIRED:
                raise EncryptionRequiredError("hook_unavailable", str(exc)) from None
            self.unavailable = "hook_unavailable"

    def accept(self) -> tuple[Stream, Addr]:
        sock, addr = self.sock.accept()
        return self.wrap(sock, addr), addr

    def wrap(self, sock: socket.socket, peer: Addr | None = None) -> Stream:
        """ENO result and TEP handshake for a kernel socket ``accept()`` returned; ``peer``
        is the address accept() gave (a socket the peer already reset has no peer name)."""
        info = StreamInfo(policy=self.config.policy.value)
        info.phases["tcp_connected"] = time.perf_counter()
        if self._bpf is not None:
            return self._wrap_bpf(sock, peer, info)
        if self._registration is None:
            info.fallback_reason = self.unavailable or "disabled_by_config"
            return Stream(sock, info)
        local, remote = sock.getsockname(), peer or sock.getpeername()
        result = _query(self.config, local, remote)

        def peer_enabled() -> bool:
            again = _hook(self.config.hook_name).result(local, remote)
            return bool(again and again.peer_eno_after_fallback)

        return establish(sock, result, self.config, info, active=False, split_check=peer_enabled)

    def _wrap_bpf(self, sock: socket.socket, peer: Addr | None, info: StreamInfo) -> Stream:
        assert self._bpf is not None
        host, settings = self._bpf
        result = _agreed(sock, host.result(sock, settings, active=False, remote=peer))
        return establish(sock, result, self.config, info, active=False,
                         split_check=lambda: host.peer_eno_after_fallback(sock))

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf[0].unlisten(self.sock.getsockname()[1])
            self._bpf = None
        if self._registration is not None:
            self._registration.close()  # the hook forgets the port with the connection
            self._registration = None
        self.sock.close()


def listen(address: Addr, config: StreamConfig | None = None, backlog: int = 128) -> Listener:
    """Bind, register with the hook (before any SYN can arrive), then listen."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        listener = Listener(sock, config)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return listener
