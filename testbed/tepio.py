"""Drive one sans-IO TEP core over a connected kernel TCP socket (the aioquic ``transmit`` shell).

``TepDriver`` is all the I/O a TEP core gets: bytes read from the socket go to
``receive_data``, whatever ``data_to_send`` returns is written out, and the core's events are
turned into a byte buffer for the application. Only bytes the core delivered in
``DataReceived`` ever reach the application (RFC 8547 §4.6: once encryption is enabled no raw
payload goes to the application). A TCP FIN goes to ``peer_closed``, which raises
``TruncationError`` unless the TEP's own end-of-stream arrived first (RFC 8547 §5: an abort
must be reported differently from EOF).

A driver made with ``hold_replies`` (ENO role B, which is TLS's server) holds what its core wrote
in the read that gave the application data after the handshake -- a TLS server's
NewSessionTickets, written on the client's Finished (RFC 8446 §4.6.1), which now arrives with
the request -- until the application answers: they leave with the response in one write,
and the client reads both in one wake-up. The same holds for the read that brought the peer's
end of stream (a client that closes right after its Finished): the tickets then leave with our
own end of stream, in the one segment that carries the FIN (testbed/streamio.py, ``_corked``),
not in a segment before it whose ACK and the FIN's the peer could send twice. Held bytes also
leave before the driver waits for the peer again, when the handshake's caller takes the core
over, and at close: nothing the core wrote waits on the peer.

A server may hand the connection to its application before the handshake ends
(``run_until_data``): once the core delivered 0-RTT data (TLS, RFC 8446 §2.3, beyond the
drafts) the application can read it and answer with 0.5-RTT data; the rest of the handshake
then happens inside later ``recv`` calls and ``completed()`` reports it.

Errors are not handled here: the stream layer resets the connection and re-raises.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

from testbed import keylog
from testbed.teps.base import (
    DataReceived,
    EndOfStream,
    HandshakeComplete,
    TepCore,
    TepEvent,
    TruncationError,
)

READ_SIZE = 65536
CLOSE_HANDSHAKE_S = 2.0  # how long a close waits for a handshake still under way to end


class TepDriver:
    """One TEP core on one socket."""

    def __init__(
        self, sock: socket.socket, core: TepCore, clock: Callable[[], float] = time.monotonic,
        *, hold_replies: bool = False,
    ) -> None:
        self.sock = sock
        self.core = core
        self.clock = clock
        self.hold_replies = hold_replies
        self._held = False  # the core has bytes to send that wait for the application's answer
        self.received = 0  # bytes read from the peer, handshake included
        # perf_counter when the first bytes from the peer were read: after our first flight
        # left, so a lower bound on when anything sent in answer to them left.
        self.first_read_at: float | None = None
        self.eof = False  # the peer's authenticated end of stream arrived
        self.handshake: HandshakeComplete | None = None
        self.early_received = False  # the core delivered 0-RTT data (DataReceived.early)
        self.started = False
        self._plain = bytearray()
        self._keys_logged: set[tuple[str, int]] = set()  # (direction, generation)
        # Key logs (analysis runs only, testbed/keylog.py): only cores with keys of their own
        # (tcpcrypt's ``key_log``) log here, and only when their keys changed.
        self._key_log: Callable[[], object] | None = (
            getattr(core, "key_log", None) if keylog.TCPCRYPT_ENV in os.environ else None)
        self._keys_seen: object = None

    def start(self) -> None:
        """Start the core (its first flight is then ready to send) without touching the
        socket: a client may do this while its TCP handshake is still under way."""
        if not self.started:
            self.started = True
            self._absorb(self.core.start(self.clock()))

    def _flush(self) -> None:
        self._held = False
        out = self.core.data_to_send()
        if out:
            self.sock.sendall(out)
        if self._key_log is not None:
            keys = self._key_log()
            if keys is not None and keys != self._keys_seen:
                self._keys_seen = keys
                keylog.note_tep_keys(self.core, self.sock, self._keys_logged)

    def _absorb(self, events: list[TepEvent]) -> None:
        for event in events:
            if isinstance(event, DataReceived):
                self._plain += event.data
                self.early_received = self.early_received or event.early
            elif isinstance(event, EndOfStream):
                self.eof = True
            elif isinstance(event, HandshakeComplete):
                self.handshake = event

    def _read_once(self) -> None:
        data = self.sock.recv(READ_SIZE)
        if not data:
            self._absorb(self.core.peer_closed())  # raises TruncationError without the TEP's end
            if not self.eof:
                raise TruncationError("TCP ended before the TEP's end of stream")
            return
        if not self.received:
            self.first_read_at = time.perf_counter()
        self.received += len(data)
        self._absorb(self.core.receive_data(data, self.clock()))
        if self.hold_replies and (self._plain or self.eof) and self.core.handshake_complete:
            self._held = True  # leaves with the application's answer (module docstring)
            return
        self._flush()

    def run_handshake(self, timeout: float) -> HandshakeComplete:
        """Start the core and exchange handshake messages until it has its keys."""
        self._exchange(timeout, stop_at_early_data=False)
        done = self.completed()
        if done is None:
            raise TruncationError("TEP finished its handshake without a session ID")
        return done

    def run_until_data(self, timeout: float) -> HandshakeComplete | None:
        """``run_handshake``, but return None as soon as the core delivered 0-RTT data.

        A server answering early data at 0.5-RTT (RFC 8446 §2.3) cannot wait for the client's
        Finished, which is one round trip later; later ``recv`` calls finish the handshake.
        """
        self._exchange(timeout, stop_at_early_data=True)
        return self.completed() if self.core.handshake_complete else None

    def _exchange(self, timeout: float, *, stop_at_early_data: bool) -> None:
        deadline = time.monotonic() + timeout
        saved = self.sock.gettimeout()
        try:
            self.start()
            self._flush()
            while not self.core.handshake_complete:
                if stop_at_early_data and self.early_received:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"TEP handshake not complete after {timeout:.1f} s")
                self.sock.settimeout(remaining)
                self._read_once()
        finally:
            self.sock.settimeout(saved)

    def completed(self) -> HandshakeComplete | None:
        """The core's HandshakeComplete once it has its keys (None before)."""
        return self.handshake

    def send(self, data: bytes) -> None:
        self.core.send_data(data)
        self._flush()

    def recv(self, size: int) -> bytes:
        """Up to ``size`` authenticated bytes; b"" after the peer's end of stream."""
        while not self._plain and not self.eof:
            if self._held:
                self._flush()  # nothing held waits while this end waits for the peer
            self._read_once()
        out = bytes(self._plain[:size])
        del self._plain[:size]
        return out

    def take_buffered(self) -> bytes:
        """Authenticated bytes already delivered but not yet read (for an event loop that
        takes the core over after the handshake)."""
        if self._held:
            self._flush()
        out = bytes(self._plain)
        self._plain.clear()
        return out

    def close_write(self, timeout: float = CLOSE_HANDSHAKE_S) -> None:
        """Send the TEP's end of stream, then TCP's FIN.

        A core still in its handshake (a TLS server that answered 0-RTT data, closing before
        the client's Finished came) sends its end of stream only once the handshake is
        complete, with what completing it writes (its NewSessionTickets, RFC 8446 §4.6.1):
        the peer is read until then, ``timeout`` seconds at most, so the FIN cannot overtake
        them (the socket takes no bytes after it)."""
        self.core.close()
        self._flush()
        if not self.core.handshake_complete:
            self._exchange(timeout, stop_at_early_data=False)
            self._flush()
        self.sock.shutdown(socket.SHUT_WR)
