"""The non-ENO TLS arms: ordinary TLS 1.3 over a plain kernel TCP socket, optionally with
TCP Fast Open (testbed/apps/proto_tls.py describes the arms)."""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from testbed import stream as eno_stream
from testbed.apps.proto_tls_arm import (
    HANDSHAKE_TIMEOUT,
    NOENO_LABEL,
    Addr,
    TlsArm,
    TlsConn,
    server_identity,
)
from testbed.apps.registry import TCP_FASTOPEN, TCP_FASTOPEN_CONNECT, TFO_QUEUE
from testbed.tepio import TepDriver
from testbed.teps import tls
from testbed.teps.base import IntegrityError, Role, TepContext, TepError
from testbed.teps.tls.constants import TEP_NAME


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

    def prepare(self) -> None:
        """Between connections: the next server SSL object (testbed/teps/tls/identity.py)."""
        server_identity(self.arm.server_profile).prepare()

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
    # The server's tickets leave with its response (hold_replies, testbed/tepio.py).
    return TepDriver(sock, tls.make_core(TepContext(role=role, options=options,
                                                    transcript=b"")),
                     hold_replies=role is Role.B)


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

