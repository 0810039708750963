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

Frame sizes (``FrameSizer``): a receiving TEP hands over a frame (a tcpcrypt frame, a TLS
record) only once all of it has arrived and its tag is checked. A frame larger than what the
sender's congestion window lets out in one flight (10 segments when a connection starts,
RFC 6928, and again after an idle period, RFC 5681 §4.1) keeps every byte of it from the
application until the next flight, one round trip later. So the first ``SMALL_FRAMES_FOR``
bytes the application sends, and again the first ones after ``IDLE_RESTART_S`` without
sending, go to the core in pieces of one segment each (the path MSS less ``FRAME_HEADROOM``),
one frame each; past that, frames grow to the TEP's largest (fewer tags, nonces and calls per
byte). TLS stacks size records the same way (dynamic record sizing). The transparent relay
cuts what it reads from applications the same way (testbed/transparent/relay.py).

Errors are not handled here: the stream layer resets the connection and re-raises.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

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

SMALL_FRAMES_FOR = 256 << 10  # bytes sent in one-segment frames after a start or an idle time
# Linux restarts slow start after an RTO of idleness (tcp_slow_start_after_idle), and its RTO
# is at least 200 ms (TCP_RTO_MIN): idle this long and the window may be the initial one again.
IDLE_RESTART_S = 0.2
FRAME_HEADROOM = 64  # bytes of a segment left for a frame's own header and tag (both TEPs' fit)
MIN_SMALL_FRAME = 512


@dataclass
class FrameSizer:
    """How an application's bytes are cut into TEP frames (module docstring, frame sizes).

    ``small``: the payload of a one-segment frame; ``left``: bytes still to send in such
    frames; ``last``: when the last bytes were handed to the TEP (time.monotonic())."""

    small: int
    left: int = SMALL_FRAMES_FOR
    last: float = float("-inf")
    restart: bool = True  # small frames again after IDLE_RESTART_S without sending

    @classmethod
    def for_socket(cls, sock: socket.socket) -> FrameSizer:
        """One-segment frames for the path MSS of a connected TCP ``sock`` (TCP_MAXSEG,
        tcp(7)); another kind of socket (a unix socket pair in a test) has no congestion
        window to fit: its frames are the TEP's largest from the start."""
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
            return cls(small=MIN_SMALL_FRAME, left=0, restart=False)
        mss = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
        return cls(small=max(mss - FRAME_HEADROOM, MIN_SMALL_FRAME))

    def chunks(self, data: memoryview, now: float) -> list[memoryview]:
        """``data`` cut into what each frame carries: one-segment pieces while small frames
        are due, the rest whole (the TEP cuts it at its own largest frame)."""
        if self.restart and now - self.last > IDLE_RESTART_S:
            self.left = SMALL_FRAMES_FOR
        self.last = now
        if self.left <= 0:
            return [data]
        head = min(len(data), self.left)
        self.left -= head
        out = [data[i:min(i + self.small, head)] for i in range(0, head, self.small)]
        if head < len(data):
            out.append(data[head:])
        return out


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
        self._frames: FrameSizer | None = None

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
        if self._frames is None:  # the MSS is known once the connection is up
            self._frames = FrameSizer.for_socket(self.sock)
        pieces = self._frames.chunks(memoryview(data), self.clock())
        if len(pieces) == 1:
            self.core.send_data(data)
        else:
            # One frame each (module docstring, frame sizes), as bytes: unlike the relay's
            # reads, a driver's send may be TLS early data, whose path takes bytes only.
            for piece in pieces:
                self.core.send_data(bytes(piece))
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
