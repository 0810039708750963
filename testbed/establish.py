"""From the ENO datapath's result to a stream: fallback, fail closed, or the TEP handshake.

``establish`` is where both ends of testbed/stream.py meet once the TCP handshake is over:
the hook's result (testbed/eno/control.py) or the bpf datapath's says whether ENO negotiated
a TEP, fell back, or aborted; under the ``required`` policy anything but a negotiated TEP
resets the connection (``EncryptionRequiredError``, RFC 8547 §4.7 mandatory encryption). A
negotiated TEP's core gets the role and the transcript (RFC 8547 §4.8) and runs its handshake
over the socket (testbed/tepio.py) before the application sees the stream; a failed handshake
resets the connection and is named (``handshake_failure``).

The per-thread control connections to the host's ENO hook (``hook_client``) and the result
query (``query``) live here too: the active and the passive end, and the SYN-data streams of
testbed/synstream.py, share them.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

from testbed.earlytep import EarlyTep
from testbed.eno.control import HookClient, HookUnavailableError, Result
from testbed.streamconfig import (
    UNENCRYPTED_TEPS,
    Addr,
    EncryptionRequiredError,
    IntegrityFailure,
    PeerRefusedTep,
    Policy,
    StreamConfig,
    StreamError,
    StreamInfo,
    TepFailure,
    UndecidedEnoError,
    note_handshake,
)
from testbed.streamio import Stream, reset
from testbed.tepio import TepDriver
from testbed.teps import base
from testbed.teps.base import Role, TepContext, TepError

_local = threading.local()


def hook_client(name: str) -> HookClient:
    """A per-thread control connection (connecting costs a syscall round per stream)."""
    clients: dict[str, HookClient] = _local.__dict__.setdefault("clients", {})
    client = clients.get(name)
    if client is None:
        client = clients[name] = HookClient(name)
    return client


def forget_hook(name: str) -> None:
    client = _local.__dict__.get("clients", {}).pop(name, None)
    if client is not None:
        client.close()


def query(config: StreamConfig, local: Addr, remote: Addr) -> Result | None:
    try:
        return hook_client(config.hook_name).result(local, remote, wait=config.eno_wait)
    except HookUnavailableError:
        forget_hook(config.hook_name)
        return None


def tcp_socket(timeout: float | None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)
    return sock


def _fail_closed(sock: socket.socket, reason: str, detail: str = "") -> EncryptionRequiredError:
    error = EncryptionRequiredError(reason, detail)
    error.local_port = port_of(sock)
    reset(sock)
    return error


def port_of(sock: socket.socket) -> int | None:
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
            undecided.local_port = port_of(sock)
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


def negotiated_tep(sock: socket.socket, result: Result) -> tuple[int, Role]:
    """A negotiated result's TEP id and role. A result that names no TEP or role contradicts
    itself: the connection is reset (StreamError) before any TEP byte is read."""
    if result.tep_id is None or result.role is None:
        error = StreamError(f"the ENO datapath reported {result.outcome or 'a result'} without "
                            "a TEP or a role; connection reset")
        error.local_port = port_of(sock)
        reset(sock)
        raise error
    return result.tep_id, Role(result.role)


def _start_tep(
    sock: socket.socket, result: Result, config: StreamConfig, info: StreamInfo,
    early: EarlyTep | None = None,
) -> Stream:
    tep_id, role = negotiated_tep(sock, result)
    spec = base.by_id(tep_id)
    if spec is None:  # the hook negotiated an id this process never offered
        raise _fail_closed(sock, "unknown_tep", f"{tep_id:#x}")
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
            refusal.local_port = port_of(sock)
            reset(sock)
            raise refusal from exc
    options.update(config.tep_options.get(spec.name, {}))
    ctx = TepContext(role=role, transcript=info.transcript, random=os.urandom,
                     now=time.monotonic(), peer_suboption_data=result.peer_data_bytes,
                     options=options)
    # Role B's post-handshake bytes (TLS tickets) leave with its answer (testbed/tepio.py).
    driver = TepDriver(sock, spec.factory(ctx), hold_replies=role is Role.B)
    return _run_tep(sock, config, info, spec, driver)


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
    info.encrypted = spec.name not in UNENCRYPTED_TEPS
    return Stream(sock, info, driver)



def handshake_failure(sock: socket.socket, driver: TepDriver, spec: base.TepSpec,
                      exc: Exception) -> TepFailure:
    """Reset a connection whose TEP handshake failed and name the failure: refused (nothing
    received, then EOF or reset), tampered (integrity), or any other TEP error."""
    refused = driver.received == 0 and isinstance(exc, base.TruncationError | ConnectionError)
    port = port_of(sock)
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
