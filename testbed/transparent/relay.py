"""The transparent proxy's data path: one selectors loop relaying connection pairs.

A ``Pair`` joins the application's ordinary TCP socket (the ``app`` side) to the stream the
proxy opened or accepted over the network (the ``net`` side, testbed/stream.py). After a
fallback the net side is plain TCP and bytes are copied; with a TEP its sans-IO core
(testbed/teps/base.py) protects what goes out and authenticates what comes in, and only
bytes the core delivered reach the application (RFC 8547 §4.6).

What the application sees is what plain TCP would have shown it:

* EOF / half-close: the application's FIN becomes the TEP's authenticated end of stream and
  then a FIN (``close`` before ``shutdown(SHUT_WR)``); the peer's end of stream becomes a
  FIN towards the application. Each direction closes on its own, so a half-closed
  connection keeps carrying the other direction.
* Resets: a RST (or a send into a reset socket) on either side resets the other one
  (SO_LINGER 0). A TCP FIN without the TEP's end of stream is a truncation (RFC 8547 §5:
  an abort must be told apart from EOF), and so is reported to the application as a reset;
  a TEP integrity failure resets both sides, nothing unauthenticated is delivered.
* Back-pressure: a side is not read while the other side has more than ``HIGH_WATER``
  bytes waiting, so a slow reader slows the sender as TCP would.

Batching: the proxy runs at real-time priority, so without more it wakes for every few
segments the network delivers (about 5 KiB per read at 1 Gbit/s), and each turn of the
loop costs the same Python and system calls whatever it carries. While a network side
delivers more than ``BULK_RATE`` its socket's SO_RCVLOWAT is raised to ``BATCH`` (socket(7):
epoll then reports it readable once that much is queued, or at FIN or an error); a side
that has not been read for ``SWEEP`` seconds drops back to 1 byte at once (the kernel then
reports what is queued), so the tail of a burst waits at most ``SWEEP``, and traffic below
the rate never waits.

Frame sizes: what the relay reads from the application goes to the TEP cut by the network
side's ``FrameSizer`` (testbed/tepio.py): one-segment frames while the congestion window may
be small, so a receiving TEP can hand over what each segment completes. Without it an HTTP
server's headers and a 16 KiB body, read together, made one tcpcrypt frame larger than the
initial window, and curl saw its first byte one round trip late.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from testbed.stream import Stream, reset
from testbed.tepio import FrameSizer
from testbed.teps.base import DataReceived, EndOfStream, TepCore, TepError, TruncationError

logger = logging.getLogger("tcpinc.transparent")
READ_SIZE = 262144  # large reads: fewer loop turns and TEP calls per byte
HIGH_WATER = 256 << 10
MAX_IOV = 64
BULK_RATE = 32 << 20  # bytes/s from the network past which its reads are batched
RATE_WINDOW = 0.01  # seconds over which that rate is measured
BATCH = 64 << 10  # SO_RCVLOWAT while batching
SWEEP = 0.001  # a batching side unread this long goes back to SO_RCVLOWAT 1


class PairClosed(Exception):
    """Internal: the pair ended (``how`` says whether it was reset)."""


@dataclass(eq=False)  # hashed by identity: batching sides live in a set
class Side:
    """One socket of a pair with what still has to be written to it."""

    name: str
    sock: socket.socket
    out: bytearray = field(default_factory=bytearray)
    eof_pending: bool = False  # shut the write direction once ``out`` is flushed
    write_closed: bool = False
    read_closed: bool = False
    received: int = 0
    sent: int = 0
    reads: int = 0  # recv calls that returned data or EOF (loop turns spent on this side)
    batching: bool = False  # SO_RCVLOWAT is BATCH (module docstring)
    last_read: float = 0.0  # time.monotonic() of the last read
    window_start: float = 0.0
    window_bytes: int = 0

    def pace(self, size: int, now: float) -> None:
        """Count a read of ``size`` bytes; batch reads while the rate is past BULK_RATE."""
        self.last_read = now
        self.window_bytes += size
        elapsed = now - self.window_start
        if elapsed < RATE_WINDOW:
            return
        bulk = size > 0 and self.window_bytes >= BULK_RATE * elapsed
        self.window_start, self.window_bytes = now, 0
        if bulk != self.batching:
            self.batch(bulk)

    def batch(self, on: bool) -> None:
        self.batching = on
        if self.sock.fileno() >= 0:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, BATCH if on else 1)
    registered: int = 0  # the selector events currently registered (0: none)


@dataclass(eq=False)  # hashed by identity: pairs live in a set
class Pair:
    """An application connection and its network stream, relayed both ways."""

    app: Side
    net: Side
    stream: Stream
    core: TepCore | None
    record: dict[str, Any]
    split_check: Callable[[], None] | None = None
    ended: str | None = None  # "closed" | "reset: why"
    _eos_seen: bool = False
    frames: FrameSizer | None = None  # None: the TEP's own largest frames from the start

    @classmethod
    def create(cls, app: socket.socket, stream: Stream, record: dict[str, Any]) -> Pair:
        driver = stream.tep_driver
        pair = cls(Side("app", app), Side("net", stream.sock), stream,
                   driver.core if driver is not None else None, record)
        if driver is not None:
            # Plaintext the handshake already delivered (e.g. data in the same segment as
            # the peer's last handshake message) and an end of stream already seen.
            pair.app.out += driver.take_buffered()
            pair._eos_seen = driver.eof
            pair.app.eof_pending = driver.eof
        elif stream.has_split_check:
            pair.split_check = stream.run_split_check
        for side in (pair.app, pair.net):
            side.sock.setblocking(False)
            # The relay forwards what it has at once; Nagle would hold a small segment back
            # for an ACK the far side may delay (the application made its own choice on its
            # own socket, and the stream's socket already has NODELAY).
            side.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if pair.core is not None:
            pair.frames = FrameSizer.for_socket(pair.net.sock)
        return pair

    # -- events ---------------------------------------------------------------------------

    def on_readable(self, side: Side, buffer: memoryview) -> None:
        """Read what ``side`` has into the relay's shared ``buffer`` and pass it on.

        Everything read is consumed before this returns (the core copies what it keeps,
        ``_queue`` copies what the socket did not take), so one buffer serves every pair:
        no allocation per read."""
        try:
            if side is self.net and self.split_check is not None:
                check, self.split_check = self.split_check, None
                self.net.sock.setblocking(True)
                check()  # readable: the peek cannot block
                self.net.sock.setblocking(False)
            size = side.sock.recv_into(buffer)
            side.reads += 1
        except BlockingIOError:
            return
        except OSError as exc:
            self.abort(f"{side.name} {_why(exc)}")
            return
        except Exception as exc:  # noqa: BLE001 - a stream error (split negotiation) resets
            self.abort(f"{side.name}: {exc}")
            return
        try:
            if side is self.app:
                if size:
                    self._ack_now()
                self._from_app(buffer[:size])
            else:
                side.pace(size, time.monotonic())
                self._from_net(buffer[:size])
        except OSError as exc:  # the other side's send failed (reset, broken pipe)
            self.abort(f"{side.name} -> other {_why(exc)}")
        except TepError as exc:
            self.abort(f"{type(exc).__name__}: {exc}")

    def _ack_now(self) -> None:
        """Acknowledge what was just read from the application at once.

        The application's socket keeps Nagle's algorithm (its own choice): after a small
        write (an HTTP server's headers) its next write waits until that segment is
        acknowledged. Behind a kernel TEP the peer acknowledges it; here the proxy's
        loopback socket does, and a socket that has just answered (a request relayed to the
        application) is in delayed-ACK mode, so the application's second write would wait
        the delayed-ACK timer (RFC 1122 §4.2.3.2; 40 ms on Linux) on every response after
        the first few. TCP_QUICKACK sends the ACK the kernel holds now (tcp(7)); it is not
        permanent, so it is set after every read."""
        self.app.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)

    def _from_app(self, data: memoryview) -> None:
        if data:
            self.app.received += len(data)
            if self.core is None:
                self._queue(self.net, [data])
            else:
                pieces = [data] if self.frames is None else self.frames.chunks(
                    data, time.monotonic())
                for piece in pieces:  # one frame each (module docstring, frame sizes)
                    self.core.send_data(piece)  # type: ignore[arg-type]  # cores take buffers
                self._queue(self.net, [self.core.data_to_send()])
            return
        self.app.read_closed = True
        if self.core is not None:
            self.core.close()  # the TEP's end of stream before TCP's FIN
            self.net.out += self.core.data_to_send()
        self.net.eof_pending = True

    def _from_net(self, data: memoryview) -> None:
        if data:
            self.net.received += len(data)
            if self.core is None:
                self._queue(self.app, [data])
                return
            events = self.core.receive_data(data, time.monotonic())  # type: ignore[arg-type]
            self._queue(self.net, [self.core.data_to_send()])
            self._absorb(events)
            return
        self.net.read_closed = True
        if self.core is not None:
            self._absorb(self.core.peer_closed())
            if not self._eos_seen:
                raise TruncationError("TCP ended before the TEP's end of stream")
        self.app.eof_pending = True

    def _queue(self, side: Side, chunks: list[Any]) -> None:
        """Send ``chunks`` with one gathering write when nothing is waiting (the common case:
        no join, no copy through the buffer); keep what the socket did not take for
        ``on_writable``."""
        chunks = [c for c in chunks if c]
        if not chunks:
            return
        if len(chunks) > MAX_IOV:  # far beyond what one read completes; stay under IOV_MAX
            chunks = [b"".join(chunks)]
        sent = 0
        if not side.out:
            try:
                sent = (side.sock.send(chunks[0]) if len(chunks) == 1
                        else side.sock.sendmsg(chunks))
            except BlockingIOError:
                sent = 0
            side.sent += sent
        for chunk in chunks:
            if sent >= len(chunk):
                sent -= len(chunk)
                continue
            side.out += memoryview(chunk)[sent:]
            sent = 0

    def _absorb(self, events: list[Any]) -> None:
        # One write for every frame this read completed.
        self._queue(self.app, [e.data for e in events if isinstance(e, DataReceived)])
        if any(isinstance(event, EndOfStream) for event in events):
            self._eos_seen = True
            self.app.eof_pending = True

    def on_writable(self, side: Side) -> None:
        try:
            while side.out:
                sent = side.sock.send(side.out)
                side.sent += sent
                del side.out[:sent]
            if side.eof_pending and not side.write_closed:
                side.sock.shutdown(socket.SHUT_WR)
                side.write_closed = True
        except BlockingIOError:
            return
        except OSError as exc:
            self.abort(f"{side.name} {_why(exc)}")

    # -- state ----------------------------------------------------------------------------

    def interest(self, side: Side) -> int:
        """The selector events ``side`` waits for now (0: none)."""
        other = self.net if side is self.app else self.app
        events = 0
        if not side.read_closed and len(other.out) < HIGH_WATER:
            events |= selectors.EVENT_READ
        if side.out or (side.eof_pending and not side.write_closed):
            events |= selectors.EVENT_WRITE
        return events

    @property
    def finished(self) -> bool:
        if self.ended is not None:
            return True
        done = all(s.read_closed and s.write_closed and not s.out for s in (self.app, self.net))
        if done:
            self.ended = "closed"
        return done

    def abort(self, why: str) -> None:
        """Reset both sides: what a RST or a failed check on one side means for the other."""
        if self.ended is None:
            self.ended = f"reset: {why}"
        for side in (self.app, self.net):
            if side.sock.fileno() >= 0:
                reset(side.sock)

    def close(self) -> None:
        for side in (self.app, self.net):
            if side.sock.fileno() >= 0:
                side.sock.close()
        self.record.update(
            ended=self.ended, app_bytes_in=self.app.received, app_bytes_out=self.app.sent,
            net_bytes_in=self.net.received, net_bytes_out=self.net.sent,
            app_reads=self.app.reads, net_reads=self.net.reads,
            t_end=time.time(),
        )


# glibc mallopt(3) parameters (malloc.h).
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3


def keep_buffers_in_heap() -> bool:
    """Stop glibc from mapping and unmapping every large buffer.

    Each read, TEP frame and record is a fresh object of up to ``READ_SIZE`` bytes; past
    malloc's mmap threshold every one is an mmap, 64 page faults and a munmap, which costs
    more CPU per byte than the AEAD itself. Serving them from a heap that is never trimmed
    below 256 MiB reuses the same pages (measured: about half the relay's CPU per byte
    with tcpcrypt). False where this is not glibc (nothing changed)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    settings = ((M_MMAP_THRESHOLD, 64 << 20), (M_TRIM_THRESHOLD, 256 << 20),
                (M_TOP_PAD, 16 << 20))
    return all(mallopt(param, value) == 1 for param, value in settings)


def _why(exc: OSError) -> str:
    names = {errno.ECONNRESET: "reset", errno.EPIPE: "broken pipe", errno.ETIMEDOUT: "timeout"}
    return names.get(exc.errno or 0, str(exc))


class Relay:
    """The selectors loop over every pair (one thread; the proxy's only data path)."""

    def __init__(self, on_end: Callable[[Pair], None]) -> None:
        self.selector = selectors.DefaultSelector()
        self.on_end = on_end
        self.pairs: set[Pair] = set()
        self.buffer = memoryview(bytearray(READ_SIZE))  # every read lands here (one thread)
        self.batching: set[tuple[Pair, Side]] = set()

    def timeout(self, default: float | None) -> float | None:
        """How long the loop may wait for events: at most SWEEP while a side batches."""
        if not self.batching:
            return default
        return SWEEP if default is None else min(default, SWEEP)

    def sweep(self) -> None:
        """After each wait: sides that batch but were not read for SWEEP go back to
        SO_RCVLOWAT 1, which makes the kernel report what they have queued."""
        if not self.batching:
            return
        now = time.monotonic()
        for pair, side in [b for b in self.batching if now - b[1].last_read >= SWEEP]:
            self.batching.discard((pair, side))
            side.window_start, side.window_bytes = now, 0  # the rate starts again from here
            try:
                side.batch(False)
            except OSError as exc:
                pair.abort(f"{side.name} {_why(exc)}")
                self._refresh(pair)

    def add(self, pair: Pair) -> None:
        self.pairs.add(pair)
        self._refresh(pair)

    def handle(self, key: selectors.SelectorKey, mask: int) -> None:
        pair, side = key.data
        if pair not in self.pairs:
            return  # dropped earlier in the same batch of events
        try:
            self._handle(pair, side, mask)
        except Exception as exc:  # noqa: BLE001 - a bug costs this pair (reset), not the proxy
            logger.exception("relay: pair failed")
            pair.abort(f"proxy error: {type(exc).__name__}: {exc}")
        self._refresh(pair)

    def _handle(self, pair: Pair, side: Side, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            pair.on_writable(side)
        if mask & selectors.EVENT_READ and pair.ended is None:
            pair.on_readable(side, self.buffer)
            if side.batching:
                self.batching.add((pair, side))
        if pair.ended is None:
            other = pair.net if side is pair.app else pair.app
            pair.on_writable(other)  # flush what this event produced without another wait

    def _refresh(self, pair: Pair) -> None:
        if pair.finished:
            self._drop(pair)
            return
        for side in (pair.app, pair.net):
            events = pair.interest(side)
            if events == side.registered:
                continue  # no epoll_ctl call when nothing changed (the common case)
            if events and side.registered:
                self.selector.modify(side.sock, events, (pair, side))
            elif events:
                self.selector.register(side.sock, events, (pair, side))
            else:
                self.selector.unregister(side.sock)
            side.registered = events

    def _drop(self, pair: Pair) -> None:
        if pair not in self.pairs:
            return  # already dropped: one select() can report both sides of an ended pair
        for side in (pair.app, pair.net):
            if side.registered:
                # A socket an abort already closed is found by object, not by its descriptor.
                self.selector.unregister(side.sock)
                side.registered = 0
        self.pairs.discard(pair)
        self.batching -= {(pair, pair.app), (pair, pair.net)}
        pair.close()
        self.on_end(pair)

    def shutdown(self) -> None:
        for pair in list(self.pairs):
            pair.abort("proxy stopped")
            self._drop(pair)
