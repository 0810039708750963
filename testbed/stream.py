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

Layout: this module opens connections (``connect``, ``Listener``); testbed/establish.py turns
the datapath's result into a stream (fallback, fail closed, or the TEP handshake);
testbed/streamio.py is the established ``Stream`` (reads, writes, close). The configuration
types (``Policy``, ``StreamConfig``, ``StreamInfo``, the errors, ``TepProvider``) live in
testbed/streamconfig.py. ``Stream``, ``reset``, ``establish`` and the configuration types are
re-exported here.

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
import socket
import time

from testbed.earlytep import connect_preparing
from testbed.eno.bpf import datapath
from testbed.eno.control import HookClient, HookUnavailableError, Result, Settings
from testbed.establish import (
    establish,
    forget_hook,
    hook_client,
    port_of,
    query,
    tcp_socket,
)
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
from testbed.streamio import Stream, reset  # re-exported: the stream API

__all__ = [
    "UNENCRYPTED_TEPS", "Addr", "EncryptionRequiredError", "IntegrityFailure", "Listener",
    "NoSessionIdError", "PeerRefusedTep", "Policy", "SplitNegotiationError", "Stream",
    "StreamConfig", "StreamError", "StreamInfo", "TepFailure", "TepProvider",
    "UndecidedEnoError", "connect", "establish", "listen", "note_handshake",
    "register_provider", "reset",
]


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
        return plain_connect(address, config, timeout, local_address, "disabled_by_config")
    try:
        return _eno_connect(address, config, timeout, local_address)
    except ConnectionRefusedError as exc:
        if config.policy is Policy.REQUIRED or not config.retry_plain_after_reset:
            raise
        # A RST to our SYN with ENO: a box that rejects unknown options, or a closed port.
        # Opportunistic: one more SYN without ENO tells them apart (RFC 3168 §6.1.1.1 lets
        # an ECN-setup SYN be retried the same way); a closed port refuses it again.
        stream = plain_connect(address, config, timeout, local_address, "syn_reset")
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
        stream = plain_connect(address, config, timeout, local_address, "peer_refused_tep")
        stream.info.detail = str(exc)
        return stream


def plain_connect(
    address: Addr, config: StreamConfig, timeout: float | None, local_address: Addr | None,
    reason: str,
) -> Stream:
    info = StreamInfo(policy=config.policy.value, fallback_reason=reason)
    sock = tcp_socket(timeout)
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
        return plain_connect(address, config, timeout, local_address, "no_tep_configured")
    sock = tcp_socket(timeout)
    try:
        if local_address is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(local_address or ("0.0.0.0", 0))
        host = datapath.current()
        if host is not None:
            return _bpf_connect(host, sock, address, settings, config, info)
        try:
            hook = hook_client(config.hook_name)
            hook.announce(sock.getsockname()[1], settings, wait=False)
            info.phases["eno_announced"] = time.perf_counter()
        except HookUnavailableError as exc:
            forget_hook(config.hook_name)
            if config.policy is Policy.REQUIRED:
                raise EncryptionRequiredError("hook_unavailable", str(exc)) from None
            sock.connect(address)
            info.phases["tcp_connected"] = time.perf_counter()
            info.fallback_reason, info.detail = "hook_unavailable", str(exc)
            return Stream(sock, info)
        try:
            early = connect_preparing(sock, address, config)
        except ConnectionResetError as exc:  # the handshake completed: the hook followed it
            raise _reset_in_connect(query(config, _local_after_reset(sock), address), sock,
                                    config, exc) from exc
        except OSError:
            _cancel(config.hook_name, sock)  # no SYN used it: a later socket may get the port
            raise
        info.phases["tcp_connected"] = time.perf_counter()
        result = _result(config, sock, address)
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
    result = _agreed(sock, host.result(sock, settings, active=True, remote=_peer(sock, address)))
    return establish(sock, result, config, info, active=True, early=early)


def _agreed(sock: socket.socket, result: Result | None) -> Result | None:
    """The bpf datapath's result, unless the kernel did what the pure core would not have
    (testbed/eno/bpf/datapath.py): the two ends may then disagree about encryption, so the
    connection is reset before anything is sent."""
    if result is None or result.error is None or result.outcome is None:
        return result
    error = StreamError(f"{result.error}; connection reset")
    error.local_port = port_of(sock)
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
    port = port_of(sock)
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
        hook_client(name).cancel(sock.getsockname()[1])


def _peer(sock: socket.socket, address: Addr) -> Addr:
    """The peer of a connection connect() just completed. The peer may have reset it since (a
    passive end that refused on the first ACK, RFC 8547 §4.7): getpeername() then fails with
    ENOTCONN, and the address connected to names the peer instead."""
    try:
        ip, port = sock.getpeername()[:2]
    except OSError:
        return address
    return (str(ip), int(port))


def _result(config: StreamConfig, sock: socket.socket, address: Addr) -> Result | None:
    return query(config, _local_after_reset(sock), _peer(sock, address))



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

    def prepare(self) -> None:
        """Let each TEP's provider make, while the server waits for its next connection, what
        that connection would otherwise make between the client's first TEP message and the
        answer (``prepare(spec)``: a TLS server's SSL object, tcpcrypt role B's key pair)."""
        for spec in self.config.specs():
            method = getattr(self.config.provider(spec.name), "prepare", None)
            if method is not None:
                method(spec)

    def accept(self) -> tuple[Stream, Addr]:
        sock, addr = self.sock.accept()
        return self.wrap(sock, addr), addr

    def wrap(self, sock: socket.socket, peer: Addr | None = None) -> Stream:
        """ENO result and TEP handshake for a kernel socket ``accept()`` returned; ``peer``
        is the address accept() gave (a socket the peer already reset has no peer name)."""
        info = StreamInfo(policy=self.config.policy.value)
        info.phases["tcp_connected"] = time.perf_counter()
        if self._bpf is not None:
            return wrap_bpf(self._bpf, sock, peer, self.config, info)
        if self._registration is None:
            info.fallback_reason = self.unavailable or "disabled_by_config"
            return Stream(sock, info)
        local, remote = sock.getsockname(), peer or sock.getpeername()
        result = query(self.config, local, remote)

        def peer_enabled() -> bool:
            again = hook_client(self.config.hook_name).result(local, remote)
            return bool(again and again.peer_eno_after_fallback)

        return establish(sock, result, self.config, info, active=False, split_check=peer_enabled)

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf[0].unlisten(self.sock.getsockname()[1])
            self._bpf = None
        if self._registration is not None:
            self._registration.close()  # the hook forgets the port with the connection
            self._registration = None
        self.sock.close()


def wrap_bpf(bpf: tuple[datapath.BpfHost, Settings], sock: socket.socket, peer: Addr | None,
             config: StreamConfig, info: StreamInfo) -> Stream:
    """The passive end on the bpf datapath: the kernel's record of an accepted connection
    judged by the pure core (the listener's port was pushed with ``BpfHost.listen``), then
    fallback, fail closed or the TEP handshake. Also the transparent proxy's, whose accepted
    connections arrive on another port than the one pushed (testbed/transparent/proxy.py)."""
    host, settings = bpf
    result = _agreed(sock, host.result(sock, settings, active=False, remote=peer))
    return establish(sock, result, config, info, active=False,
                     split_check=lambda: host.peer_eno_after_fallback(sock))


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
