"""Streams whose SYN carries the SYN TEP's first flight (RFC 8547 §4.7; beyond RFC 8548 and
beyond the use-tls draft, neither of which defines SYN data).

Theory of operation
-------------------
RFC 8547 §4.7 lets a TEP define data on the SYN, governed by the segment's SYN TEP (the last
TEP id of A's SYN-form option), off by default and on only through an API: here
``StreamConfig.syn_data`` names the TEPs. Linux puts data on a SYN without a TFO cookie option
(which §4.7 forbids beside ENO) in its no-cookie TFO modes: ``net.ipv4.tcp_fastopen`` with 0x4
on the client, 0x200 on the server (testbed/apps/proto_syn.py sets them per host).

Active opener (``connect``): the TEP core is made before the SYN, without a transcript (none
exists yet, §4.8); its first flight (tcpcrypt Init1, a TLS ClientHello with any 0-RTT data, or
a resumed tcpcrypt session's first frames when the provider presumes the server's answer)
is written through TCP_FASTOPEN_CONNECT and leaves on the SYN. The hook adds ENO offering only
the SYN TEP: had B chosen another TEP, the kernel would resend the discarded SYN data as that
TEP's first bytes. The hook's outcome then decides:

* negotiated: the transcript goes into the core's context before any key is derived from it
  (tcpcrypt's keys, RFC 8548 §3.3; the TLS session ID's exporter context), and the handshake
  goes on. Whether B kept the SYN data or discarded it (its kernel then acknowledged only the
  ISN and ours sends the bytes again, §4.7) does not change the byte stream.
* aborted (§4.7: SYN data acknowledged without the SYN TEP negotiated, or a SYN-ACK without
  ENO after SYN-only data) or fallback (no common TEP): the connection is reset, because
  the TEP's bytes must never be read as application data; an opportunistic stream then
  reconnects without ENO and without SYN data, and says why in ``fallback_reason``.

Passive opener (``SynListener``): a SYN whose data the hook accepted (the SYN TEP is the TEP
it selects and names SYN data, §4.7) makes the kernel's TFO path hand the connection to
``accept()`` at the SYN. The hook has no outcome yet (that waits for A's first ACK segment,
§4.6), but its *tentative* result names the role, the TEP and the transcript the SYN exchange
decided, so the TEP core starts at once and its answer (Init2, the ServerHello flight, 0.5-RTT
data) leaves right behind the SYN-ACK instead of a round trip later. Before the stream takes
the handshake as done, the final outcome must confirm the tentative one (same TEP, same
transcript); otherwise (A's first ACK lacked ENO, §4.6 rule 1) the connection is reset and
nothing more is delivered. The one thing the application may have received before that
confirmation is TLS 0-RTT data, which TLS itself authenticated under the resumption PSK; that
is the price of answering at 0.5 RTT and is the same exposure TLS 0-RTT has anyway.

The bpf datapath does not judge SYN data (the kernel program would let the kernel acknowledge
it before anything decides, §4.7): settings with SYN data are refused there in one line.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from testbed.eno.bpf import datapath
from testbed.eno.control import HookUnavailableError, Result, Settings
from testbed.establish import (
    forget_hook,
    handshake_failure,
    hook_client,
    negotiated_tep,
    port_of,
    query,
    tcp_socket,
)
from testbed.stream import (
    Addr,
    EncryptionRequiredError,
    Listener,
    Policy,
    Stream,
    StreamConfig,
    StreamError,
    StreamInfo,
    TepFailure,
    note_handshake,
    plain_connect,
    reset,
)
from testbed.tepio import TepDriver
from testbed.teps import base
from testbed.teps.base import RemoteProtocolError, Role, TepContext, TepCore, TepError

TCP_FASTOPEN = 23  # server: length of the TFO pending queue (RFC 7413 §4.1)
TCP_FASTOPEN_CONNECT = 30  # client: connect() defers the SYN to the first write
TFO_QUEUE = 64
TCPI_OPT_SYN_DATA = 0x20  # tcp_info.tcpi_options: the SYN-ACK acknowledged our SYN data


class SynDataRefused(StreamError):
    """ENO did not take the SYN data (§4.7 abort, or a fallback after the first flight was
    sent): the connection was reset; ``reason`` says why."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"SYN data not taken: {reason} {detail}".strip())
        self.reason = reason
        self.detail = detail


class SynDataUnconfirmed(RemoteProtocolError):
    """A passive end acted on SYN data, then the ENO outcome did not confirm its SYN TEP."""


def syn_tep(config: StreamConfig) -> base.TepSpec:
    """The one TEP a SYN-data stream offers, which must define SYN data."""
    if len(config.teps) != 1 or config.syn_data != config.teps:
        raise StreamError("a SYN-data stream offers exactly its SYN TEP and names it in "
                          "StreamConfig.syn_data (RFC 8547 §4.7)")
    if config.policy is Policy.OFF:
        raise StreamError("SYN data of a TEP needs ENO (policy off)")
    return base.get(config.teps[0])


def refuse_on_bpf() -> None:
    if datapath.current() is not None:
        raise StreamError("data on the SYN (RFC 8547 §4.7) needs --eno-datapath nfqueue: the "
                          "bpf program does not judge SYN data")


def syn_data_acked(sock: socket.socket) -> bool | None:
    """Whether the SYN-ACK acknowledged our SYN data (Linux TCP_INFO), None if unknown."""
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    except OSError:
        return None
    return bool(struct.unpack_from("B", raw, 5)[0] & TCPI_OPT_SYN_DATA)


# ---------------------------------------------------------------------------
# Active opener
# ---------------------------------------------------------------------------


def connect(address: Addr, config: StreamConfig, *, timeout: float | None = 10.0,
            first: bytes = b"") -> Stream:
    """A stream whose SYN carries the first flight of ``config``'s SYN TEP (module docstring).

    ``first``: application bytes for the SYN too, taken only by a TEP that has its keys before
    the SYN (a resumption whose answer the provider presumes, ``presume_answer``); the stream's
    ``info.early_data_accepted`` then says they went. Opportunistic: when ENO does not take the
    SYN data the connection is reset and a second one is made without ENO
    (``fallback_reason`` names the §4.7 abort or the fallback)."""
    spec = syn_tep(config)
    refuse_on_bpf()
    try:
        return _connect_syn(address, config, spec, timeout, first)
    except SynDataRefused as exc:
        if config.policy is Policy.REQUIRED:
            error = EncryptionRequiredError(exc.reason, exc.detail)
            error.local_port = exc.local_port
            raise error from exc
        if not config.retry_plain:
            raise
        stream = plain_connect(address, config, timeout, None, exc.reason)
        stream.info.detail = f"{exc}; reconnected without ENO"
        return stream


def _connect_syn(address: Addr, config: StreamConfig, spec: base.TepSpec,
                 timeout: float | None, first: bytes) -> Stream:
    info = StreamInfo(policy=config.policy.value)
    sock = tcp_socket(timeout)
    try:
        sock.bind(("0.0.0.0", 0))
        settings = config.settings(active=True, peer=address)
        _announce(config, sock, settings, info)
        offer = settings.teps[0][1] or b""
        presumed = _presumed_answer(config, spec, settings)
        pre = Result(local=("0.0.0.0", sock.getsockname()[1]), remote=address, active=True,
                     state="closed", local_data=offer.hex())
        ctx = TepContext(role=Role.A, transcript=b"", random=os.urandom, now=time.monotonic(),
                         peer_suboption_data=presumed or b"",
                         options=_options(config, spec, Role.A, address, pre))
        driver = TepDriver(sock, _core(spec, ctx))
        driver.start()
        on_syn = bool(first and driver.core.handshake_complete)  # keys before the SYN
        if on_syn:
            driver.core.send_data(first)
        flight = driver.core.data_to_send()
        sock.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1)
        sock.connect(address)  # returns at once: the SYN waits for the first write
        sock.sendall(flight)  # ... and carries it (no-cookie TFO, RFC 8547 §4.7)
        info.phases["syn_data_sent"] = time.perf_counter()
        _wait_connected(sock, address, timeout)
        result = query(config, sock.getsockname(), address)
        info.phases["tcp_connected"] = info.phases["eno_result"] = time.perf_counter()
        result = _check_outcome(sock, result)
        _check_presumed(sock, result, presumed)
        ctx.transcript, ctx.peer_suboption_data = result.transcript_bytes, result.peer_data_bytes
        _describe(info, spec, result)
        acked = syn_data_acked(sock)
        info.syn_data = None if acked is None else "acked" if acked else "not_acked"
        stream = _handshake(sock, driver, config, info, spec, early=False)
        if on_syn:  # the peer took the presumed answer: it has the keys of our SYN's frames
            stream.info.early_data_accepted = True
        return stream
    except BaseException:
        if sock.fileno() >= 0:
            sock.close()
        raise


def _announce(config: StreamConfig, sock: socket.socket, settings: Settings,
              info: StreamInfo) -> None:
    """The offer goes to the hook before the SYN (one-way; no hook, no SYN data)."""
    try:
        hook_client(config.hook_name).announce(sock.getsockname()[1], settings, wait=False)
    except HookUnavailableError as exc:
        forget_hook(config.hook_name)
        raise SynDataRefused("hook_unavailable", str(exc)) from None
    info.phases["eno_announced"] = time.perf_counter()


def _check_presumed(sock: socket.socket, result: Result, presumed: bytes | None) -> None:
    """Reset and raise if the peer's answer is not the one our SYN data presumed."""
    if presumed is not None and result.peer_data_bytes != presumed:
        # Our SYN data was protected under keys that assumed this very answer.
        error = SynDataRefused("resumption_refused", f"the peer answered "
                               f"{result.peer_data or 'fresh'}, not the presumed answer")
        error.local_port = port_of(sock)
        reset(sock)
        raise error


def _wait_connected(sock: socket.socket, address: Addr, timeout: float | None) -> None:
    """Block until the TCP handshake ends (writable) or fails; the socket stays blocking."""
    poller = select.poll()  # not select(): descriptors above 1023 are fine
    poller.register(sock, select.POLLOUT)
    if not poller.poll(None if timeout is None else timeout * 1e3):
        raise TimeoutError(f"connect to {address[0]}:{address[1]} timed out after {timeout} s")
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, f"connect to {address[0]}:{address[1]}: {os.strerror(err)}")


def _check_outcome(sock: socket.socket, result: Result | None) -> Result:
    """The hook's result if ENO negotiated the SYN TEP; else reset and raise (module
    docstring)."""
    if result is not None and result.outcome == "negotiated":
        return result
    if result is None or result.outcome is None:
        reason = "hook_error" if result is not None and result.error else "no_eno_result"
        detail = (result.error or "") if result is not None else ""
    elif result.outcome == "aborted":
        reason, detail = result.reason or "aborted", f"§4.7 abort ({result.fallback})"
    else:
        reason, detail = result.reason or "fallback", "after SYN data (§4.7)"
    error = SynDataRefused(reason, detail)
    error.local_port = port_of(sock)
    reset(sock)
    raise error


def _presumed_answer(config: StreamConfig, spec: base.TepSpec, settings: Any) -> bytes | None:
    """The peer's suboption data a provider with ``presume_answer`` protects SYN data under:
    the identifier half its resumption offer expects back, with no nonce (a resumption whose
    keys exist before the SYN-ACK, beyond RFC 8548 §3.5; testbed/apps/proto_syn.py)."""
    provider = config.provider(spec.name)
    if not getattr(provider, "presume_answer", False):
        return None
    prefix: bytes | None = dict(settings.expect).get(spec.tep_id)
    return prefix


def _options(config: StreamConfig, spec: base.TepSpec, role: Role, peer: Addr,
             result: Result) -> dict[str, Any]:
    options: dict[str, Any] = {}
    provider = config.provider(spec.name)
    if provider is not None:
        options.update(provider.context_options(spec, role=role, peer=peer, result=result))
    options.update(config.tep_options.get(spec.name, {}))
    return options


def _core(spec: base.TepSpec, ctx: TepContext) -> TepCore:
    return spec.factory(ctx)


def _describe(info: StreamInfo, spec: base.TepSpec, result: Result) -> None:
    info.eno = result.outcome or "tentative"
    info.tep, info.tep_id, info.role = spec.name, spec.tep_id, result.role
    info.tep_label = spec.label or None
    info.transcript = result.transcript_bytes
    info.peer_application_aware = result.peer_a


def _handshake(sock: socket.socket, driver: TepDriver, config: StreamConfig, info: StreamInfo,
               spec: base.TepSpec, *, early: bool) -> Stream:
    """Run the TEP handshake (or, ``early``, until 0-RTT data) as testbed.stream does."""
    try:
        done = (driver.run_until_data(config.handshake_timeout) if early
                else driver.run_handshake(config.handshake_timeout))
    except (TepError, OSError) as exc:
        raise handshake_failure(sock, driver, spec, exc) from exc
    if done is not None:
        note_handshake(info, done)
    info.encrypted = True
    return Stream(sock, info, driver)


# ---------------------------------------------------------------------------
# Passive opener
# ---------------------------------------------------------------------------


class ConfirmingDriver(TepDriver):
    """A driver whose handshake counts as done only once ``confirm`` (the final ENO outcome)
    agrees with the tentative result the core was started on.

    ``deliver_first``: a read that gave the application data the TEP authenticated (0-RTT
    data, a resumed session's SYN data) lets the application have it, and the answer leave,
    before the confirmation, which then runs before the next read; otherwise the
    confirmation follows the read that completed the handshake at once."""

    def __init__(self, sock: socket.socket, core: TepCore, confirm: Callable[[], None],
                 deliver_first: bool = False) -> None:
        super().__init__(sock, core)
        self._confirm: Callable[[], None] | None = confirm
        self._deliver_first = deliver_first
        self._due = False

    def _check(self) -> None:
        if self._confirm is not None and self.core.handshake_complete:
            confirm, self._confirm = self._confirm, None
            confirm()

    def _read_once(self) -> None:
        if self._due:
            self._check()
        before = self.buffered
        super()._read_once()
        if self._deliver_first and self.buffered > before:
            self._due = True
        else:
            self._check()

    @property
    def buffered(self) -> int:
        """Authenticated bytes delivered but not yet read by the application."""
        return len(self._plain)

    def run_handshake(self, timeout: float) -> base.HandshakeComplete:
        done = super().run_handshake(timeout)
        self._check()
        return done


class SynListener(Listener):
    """A listener that accepts SYN data for ``config.syn_data`` (TFO queue on the socket) and
    starts the SYN TEP at the SYN when the hook accepted it (module docstring)."""

    def __init__(self, sock: socket.socket, config: StreamConfig) -> None:
        if not config.syn_data:
            raise StreamError("SynListener needs StreamConfig.syn_data (RFC 8547 §4.7)")
        refuse_on_bpf()
        sock.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN, TFO_QUEUE)
        super().__init__(sock, config)

    def wrap(self, sock: socket.socket, peer: Addr | None = None) -> Stream:
        if self._registration is not None:
            local, remote = sock.getsockname(), peer or sock.getpeername()
            try:
                early = hook_client(self.config.hook_name).result(local, remote)
            except HookUnavailableError:
                forget_hook(self.config.hook_name)
                early = None
            if early is not None and early.tentative:
                return self._tentative(sock, early, local, remote)
        return super().wrap(sock, peer)

    def _tentative(self, sock: socket.socket, early: Result, local: Addr,
                   remote: Addr) -> Stream:
        info = StreamInfo(policy=self.config.policy.value)
        info.phases["tcp_connected"] = info.phases["eno_result"] = time.perf_counter()
        tep_id, role = negotiated_tep(sock, early)
        spec = base.by_id(tep_id)
        if spec is None or spec.name not in self.config.syn_data:
            reset(sock)
            raise StreamError(f"the hook accepted SYN data for TEP {tep_id:#x}, which "
                              "this listener does not name")
        _describe(info, spec, early)
        info.syn_data = "accepted"

        def confirm() -> None:
            final = query(self.config, local, remote)
            same = (final is not None and final.outcome == "negotiated"
                    and final.tep_id == early.tep_id and final.transcript == early.transcript)
            if not same:
                what = "no outcome" if final is None else (final.reason or final.outcome)
                raise SynDataUnconfirmed(f"ENO did not confirm the SYN TEP after its SYN data "
                                         f"was used ({what}; RFC 8547 §4.6, §4.7)")
            info.eno = "negotiated"

        try:
            options = _options(self.config, spec, role, remote, early)
        except TepError as exc:
            reset(sock)
            raise TepFailure(f"{spec.name}: {exc}") from exc
        ctx = TepContext(role=role, transcript=early.transcript_bytes, random=os.urandom,
                         now=time.monotonic(), peer_suboption_data=early.peer_data_bytes,
                         options=options)
        driver = ConfirmingDriver(sock, _core(spec, ctx), confirm,
                                  deliver_first=self.config.early_handoff)
        return _handshake(sock, driver, self.config, info, spec,
                          early=self.config.early_handoff)
