"""An established stream: the application's reads and writes, and its close.

A ``Stream`` is a connected kernel TCP socket and, after ENO negotiated a TEP, the
``TepDriver`` (testbed/tepio.py) that carries the TEP's sans-IO core over it; after a fallback
there is no driver and the socket is plain TCP. testbed/stream.py makes streams
(``connect`` / ``listen``, via testbed/establish.py) and re-exports this class.

Only bytes the TEP core authenticated reach the application (RFC 8547 §4.6). A TEP error
resets the connection and raises ``TepFailure`` (``IntegrityFailure`` for a failed integrity
check). A passive end that fell back checks, before its first delivery, whether the peer
enabled encryption after all (the split-negotiation check; testbed/stream.py explains it).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from testbed.streamconfig import (
    IntegrityFailure,
    NoSessionIdError,
    SplitNegotiationError,
    StreamError,
    StreamInfo,
    TepFailure,
    note_handshake,
)
from testbed.tepio import TepDriver
from testbed.teps import base
from testbed.teps.base import TepError


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
        self._note_late_handshake(driver)  # an early handoff's handshake may end in a recv
        return data

    def _note_late_handshake(self, driver: TepDriver) -> None:
        """The session ID of a handshake that ended after the handoff (testbed/tepio.py,
        ``run_until_data``): in a later recv, or in the close that waited for it."""
        if self.info.session_id is None:
            done = driver.completed()
            if done is not None:
                note_handshake(self.info, done)

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
                self._note_late_handshake(driver)
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
                self._drain(self._driver, CLOSE_DRAIN_S)
        if self.sock.fileno() >= 0:
            self.sock.close()

    def _drain(self, driver: TepDriver, limit: float) -> None:
        """Read and drop the peer's remaining bytes until its end of stream, for ``limit``
        seconds at most (a peer that never closes is then left to our close)."""
        deadline = time.monotonic() + limit
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            if not self._guard(lambda: driver.recv(_DRAIN_READ)):
                return

    def abort(self) -> None:
        """Reset the connection (RST)."""
        if self.sock.fileno() >= 0:
            reset(self.sock)
