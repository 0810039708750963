"""The per-host TCP-ENO hook: `python -m testbed.eno.hook --queue N`.

The role the tcpcrypt reference daemon played: iptables rules (rules.py) queue this host's
handshake-phase TCP segments to NFQUEUE ``N``; this process hands each one to ``HookEngine``
(engine.py), which adds, reads and checks the ENO option exactly as the pure core decides, and
gives every packet a verdict (always a release, NF_REPEAT with a mark bit that the rules
count, marks.py; possibly rewritten). Local applications talk to it
over the control channel (control.py): an abstract AF_UNIX socket, root only.

One thread, one epoll loop (``selectors``) over the queue's netlink socket, the control
socket and its clients; queued packets are served before control messages, so a verdict is
never late because of an application. Outgoing segments get their verdict after the engine
(it may add ENO); incoming ones are only read (except SYN data that §4.7 says to discard), so
they are released first and read after, off the kernel's path.

A new connection's SYN also zeroes the packet counters of a conntrack entry it reopened
(ctzero.py), which the rules' windows count with.

Contract with ``Network.start_helper``: prints ``ready`` once the queue is bound and the control
socket listens; SIGTERM/SIGINT raise ``Stop`` (PEP 475 would restart a blocked wait for a
handler that only set a flag; a signal during a packet callback is held until the verdict is
given), the queue is unbound, ``--stats-out`` is written and the exit code is 0. The rules use
``--queue-bypass``: if this process is gone, segments go through untouched and connections
fall back to plain TCP (the peer sees no ENO, RFC 8547 §4.6) instead of stalling.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import logging
import os
import resource
import selectors
import signal
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from testbed.eno.control import (
    DEFAULT_NAME,
    MAX_MESSAGE,
    PROTOCOL_VERSION,
    ControlError,
    Settings,
    address,
    decode,
    encode,
    hex_bytes,
)
from testbed.eno.ctzero import CounterZeroer
from testbed.eno.engine import HookEngine, Key
from testbed.eno.marks import RELEASED
from testbed.packet import PacketError, Segment, parse_segment

logger = logging.getLogger("tcpinc.eno.hook")

NF_INET_LOCAL_OUT = 3  # netfilter hook numbers (linux/netfilter.h): OUTPUT is outgoing
_UCRED = struct.Struct("3i")  # struct ucred from SO_PEERCRED: pid, uid, gid
TIMING_SAMPLES = 8192  # most recent per-packet callback times kept for median / p99
EXPIRY_TICK = 0.5
DRAIN_ROUNDS = 64


class Stop(Exception):
    """Raised by the signal handler so blocking calls end and teardown runs."""


class _SignalGate:
    """A signal during a packet callback is held until the verdict has been given."""

    in_callback = False
    pending: int | None = None


_GATE = _SignalGate()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _GATE.in_callback:
        _GATE.pending = signum
        return
    raise Stop(signum)


@dataclass
class _Waiter:
    client: socket.socket
    message_id: object
    key: Key
    deadline: float


class ControlServer:
    """The control channel's server side (protocol in control.py)."""

    def __init__(self, engine: HookEngine, name: str = DEFAULT_NAME) -> None:
        self.engine = engine
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.bind(address(name))
        self.sock.listen(socket.SOMAXCONN)
        self.sock.setblocking(False)
        # epoll through selectors: select() fails on descriptors above 1023
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.sock, selectors.EVENT_READ, self)
        self.clients: dict[int, socket.socket] = {}
        self.waiters: list[_Waiter] = []
        self.refused = 0
        self.errors = 0
        self.extra_stats: Callable[[], dict[str, Any]] = dict
        engine.on_outcome = self._on_outcome

    def close(self) -> None:
        for client in list(self.clients.values()):
            client.close()
        self.clients.clear()
        self.selector.close()
        self.sock.close()

    def next_deadline(self) -> float:
        return min((w.deadline for w in self.waiters), default=float("inf"))

    def ready(self, sock: socket.socket, now: float) -> None:
        if sock is self.sock:
            self._accept()
            return
        if sock.fileno() < 0:  # dropped earlier in this batch of events
            return
        try:
            data = sock.recv(MAX_MESSAGE)
        except BlockingIOError:
            return  # already served by drain() earlier in this round
        except OSError:
            data = b""
        if not data:
            self._drop(sock)
            return
        self._serve(sock, data, now)

    def tick(self, now: float) -> None:
        """Answer waiters whose time is up with what is known so far."""
        due = [w for w in self.waiters if w.deadline <= now]
        for waiter in due:
            self.waiters.remove(waiter)
            self._answer_result(waiter.client, waiter.message_id, waiter.key)

    def _accept(self) -> None:
        """Accept every pending control connection (a burst of new streams opens many)."""
        while True:
            try:
                client, _ = self.sock.accept()
            except BlockingIOError:
                return
            creds = client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            _pid, uid, _gid = _UCRED.unpack(creds)
            if uid != 0:  # only root in this host may steer ENO
                self.refused += 1
                client.close()
                continue
            client.setblocking(False)
            self.clients[client.fileno()] = client
            self.selector.register(client, selectors.EVENT_READ, self)

    def _drop(self, client: socket.socket) -> None:
        if client.fileno() < 0:
            return
        self.clients.pop(client.fileno(), None)
        self.selector.unregister(client)
        for port in [p for p, lst in self.engine.listeners.items() if lst.owner is client]:
            self.engine.unlisten(port, client)
        self.waiters = [w for w in self.waiters if w.client is not client]
        client.close()

    def _send(self, client: socket.socket, reply: dict[str, Any]) -> None:
        try:
            client.send(encode(reply))
        except OSError as exc:  # a client that does not read its replies is dropped
            logger.warning("control client dropped: %s", exc)
            self._drop(client)

    def _serve(self, client: socket.socket, data: bytes, now: float) -> None:
        message_id: object = None
        try:
            message = decode(data)
            message_id = message.get("id")
            reply = self._dispatch(client, message, now)
        except (ControlError, ValueError, KeyError, TypeError, IndexError) as exc:
            self.errors += 1
            logger.debug("control request refused: %s", exc)
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            if _one_way(data):
                reply = None  # a one-way message gets no reply, not even an error
        if reply is not None:
            self._send(client, {"id": message_id, **reply})

    def _dispatch(
        self, client: socket.socket, message: dict[str, Any], now: float
    ) -> dict[str, Any] | None:
        op, engine = message.get("op"), self.engine
        if op == "hello":
            return {"ok": True, "version": PROTOCOL_VERSION, "pid": os.getpid()}
        if op == "listen":
            engine.listen(_port(message), Settings.from_json(message["settings"]), client)
            return {"ok": True}
        if op == "unlisten":
            return {"ok": engine.unlisten(_port(message), client)}
        if op == "announce":
            ttl = float(message.get("ttl", 30.0))
            engine.announce(_port(message), Settings.from_json(message["settings"]), now, ttl)
            return None if message.get("noreply") else {"ok": True}
        if op == "cancel":
            return {"ok": True, "cancelled": engine.cancel(_port(message))}
        if op == "answer":  # passive resumption, RFC 8548 §3.5 (engine.py)
            deadline = now + float(message["ttl"])
            engine.answer(_port(message), int(message["tep_id"]),
                          hex_bytes(message["key"], "key"), hex_bytes(message["data"], "data"),
                          deadline)
            return None if message.get("noreply") else {"ok": True}
        if op == "unanswer":
            done = engine.unanswer(_port(message), int(message["tep_id"]),
                                   hex_bytes(message["key"], "key"))
            return None if message.get("noreply") else {"ok": True, "withdrawn": done}
        if op == "result":
            return self._result_request(client, message, now)
        if op == "stats":
            return {"ok": True, "stats": {**engine.stats(), **self.extra_stats(),
                                          "control_refused": self.refused,
                                          "control_errors": self.errors}}
        raise ControlError(f"unknown op {op!r}")

    def drain(self) -> None:
        """Serve control messages already waiting (called from the packet path, so it never
        touches the queue): a one-way announcement may sit here when its SYN arrives. It was
        sent before the SYN, so it is in a socket buffer now; bounded so a flood of control
        messages cannot hold a packet for long."""
        for _ in range(DRAIN_ROUNDS):
            ready = [key for key, _ in self.selector.select(0) if key.data is self]
            if not ready:
                return
            now = time.monotonic()
            for key in ready:
                self.ready(key.fileobj, now)  # type: ignore[arg-type]

    def _result_request(
        self, client: socket.socket, message: dict[str, Any], now: float
    ) -> dict[str, Any] | None:
        local, remote = message["local"], message["remote"]
        key: Key = (str(local[0]), int(local[1]), str(remote[0]), int(remote[1]))
        wait = float(message.get("wait", 0.0))
        result = self.engine.result(key)
        # No entry: the hook did not follow this connection (its SYN, held or read before
        # the kernel could complete the handshake, was not ours). Waiting would not help.
        if wait > 0 and result is not None and result.outcome is None and result.error is None:
            self.waiters.append(_Waiter(client, message.get("id"), key, now + wait))
            return None
        return {"ok": True, "result": result.to_json() if result else None}

    def _answer_result(self, client: socket.socket, message_id: object, key: Key) -> None:
        if client.fileno() not in self.clients:
            return
        result = self.engine.result(key)
        payload = result.to_json() if result else None
        self._send(client, {"id": message_id, "ok": True, "result": payload})

    def _on_outcome(self, key: Key) -> None:
        ready = [w for w in self.waiters if w.key == key]
        for waiter in ready:
            self.waiters.remove(waiter)
            self._answer_result(waiter.client, waiter.message_id, key)


def _one_way(data: bytes) -> bool:
    return b'"noreply":true' in data


def _port(message: dict[str, Any]) -> int:
    port = message["port"]
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ControlError(f"bad port {port!r}")
    return port


class PacketTimer:
    """Wall time spent per packet callback, and the process's CPU time (for the report)."""

    def __init__(self) -> None:
        self.samples: collections.deque[int] = collections.deque(maxlen=TIMING_SAMPLES)
        self.total_ns = 0
        self.count = 0

    def add(self, elapsed_ns: int) -> None:
        self.samples.append(elapsed_ns)
        self.total_ns += elapsed_ns
        self.count += 1

    def stats(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        ordered = sorted(self.samples)
        out: dict[str, Any] = {
            "callbacks": self.count,
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 6),
            "rss_kib": _rss_kib(),
            "callback_us_mean": round(self.total_ns / self.count / 1e3, 2) if self.count else None,
        }
        if ordered:
            out["callback_us_median"] = round(statistics.median(ordered) / 1e3, 2)
            out["callback_us_p99"] = round(ordered[int(0.99 * (len(ordered) - 1))] / 1e3, 2)
        return out


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def make_callback(
    engine: HookEngine, timer: PacketTimer, zeroer: CounterZeroer | None = None
) -> Callable[[Any], None]:
    """The NFQUEUE callback: every packet is released (``_release``), rewritten when the
    engine says so. With ``zeroer``, a SYN reaching a listener for a new connection first has
    the counters of a reopened conntrack entry zeroed, while the kernel still holds it
    (ctzero.py)."""

    def callback(packet: Any) -> None:
        start = time.perf_counter_ns()
        _GATE.in_callback = True
        new: bytes | None = None
        decided = False
        try:
            raw = packet.get_payload()
            outgoing = packet.hook == NF_INET_LOCAL_OUT
            seg = None if outgoing else _segment(raw)  # read once for both checks below
            if zeroer is not None and seg is not None:
                _zero_for_listener(engine, zeroer, seg)
            if not outgoing and not _carries_syn_data(seg):
                # Incoming segments are only read (the one rewrite is discarding SYN data,
                # RFC 8547 §4.7), so the kernel may go on while the core reads them.
                _release(packet)
                decided = True
            new = engine.handle(raw, outgoing, time.monotonic())
        except Exception:  # a bug must cost one packet's ENO, never the packet or the hook
            engine.counts["internal_errors"] += 1
            logger.exception("ENO hook: packet handling failed; packet passed unchanged")
            new = None
        finally:
            if not decided:
                if new is not None:
                    packet.set_payload(new)
                _release(packet)
            elif new is not None:
                engine.counts["late_rewrite_ignored"] += 1
            _GATE.in_callback = False
            timer.add(time.perf_counter_ns() - start)

    return callback


def _release(packet: Any) -> None:
    """The verdict on every held segment: NF_REPEAT with the ``RELEASED`` packet-mark bit,
    so the rules take it off its connection's count of held segments and let it go on
    (marks.py; the count keeps later segments of the connection behind it)."""
    packet.set_mark(packet.get_mark() | RELEASED)
    packet.repeat()


def _segment(raw: bytes) -> Segment | None:
    """The segment's headers, or None for what is not a whole IPv4 TCP segment (passed on)."""
    try:
        return parse_segment(raw)
    except PacketError:
        return None


def _zero_for_listener(engine: HookEngine, zeroer: CounterZeroer, seg: Segment) -> None:
    """An incoming SYN-only to a registered listener, for a 4-tuple the engine does not follow
    yet (not a retransmission): zero a reopened conntrack entry's counters before its release.
    Once accepted, a new connection's entry is confirmed and zeroing it would widen the
    rules' windows; active opens are zeroed from ``HookEngine.on_active_open``."""
    if not seg.is_syn or seg.is_ack or seg.dport not in engine.listeners:
        return
    if (seg.dst, seg.dport, seg.src, seg.sport) not in engine.conns:
        zeroer.zero((seg.src, seg.sport, seg.dst, seg.dport))


def _carries_syn_data(seg: Segment | None) -> bool:
    """A SYN carrying payload (the only incoming segment the hook may rewrite)."""
    return seg is not None and seg.is_syn and seg.payload_len > 0


def _syn_with_data(raw: bytes) -> bool:
    """An IPv4 TCP SYN carrying payload."""
    return _carries_syn_data(_segment(raw))


def serve(nfq: Any, server: ControlServer, engine: HookEngine) -> None:
    """The event loop; returns only by exception (Stop on SIGTERM).

    Busy-polling after each event was tried to save the process wake-up per segment: on the
    2-vCPU development machine (docs/platform.md), shared with the applications and the peer's hook,
    it made connection setup 2-3 times slower, so the loop always sleeps in epoll.
    """
    selector = server.selector
    selector.register(nfq.get_fd(), selectors.EVENT_READ, nfq)
    engine.drain_control = server.drain
    next_expiry = time.monotonic() + EXPIRY_TICK
    while True:
        now = time.monotonic()
        timeout = max(0.0, min(next_expiry, server.next_deadline()) - now)
        events = selector.select(timeout)
        if any(key.data is nfq for key, _ in events):
            nfq.run(block=False)
            if _GATE.pending is not None:
                raise Stop(_GATE.pending)
        now = time.monotonic()
        for key, _ in events:
            if key.data is server:
                server.ready(key.fileobj, now)
        server.tick(now)
        if now >= next_expiry:
            engine.expire(now)
            next_expiry = now + EXPIRY_TICK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queue", type=int, required=True, help="NFQUEUE number")
    parser.add_argument("--name", default=DEFAULT_NAME, help="abstract control socket name")
    parser.add_argument("--expiry", type=float, default=30.0, help="idle seconds per entry")
    parser.add_argument("--max-conns", type=int, default=65536)
    parser.add_argument("--mtu", type=int, default=1500)
    parser.add_argument("--stats-out", default=None, help="write final stats JSON here")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2), stream=sys.stderr,
                        format="%(asctime)s eno-hook %(levelname)s %(message)s")
    from netfilterqueue import NetfilterQueue  # imported here: unit tests need no NFQUEUE

    engine = HookEngine(expiry=args.expiry, max_conns=args.max_conns, mtu=args.mtu)
    zeroer = CounterZeroer()
    engine.on_active_open = zeroer.zero
    timer = PacketTimer()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    nfq = NetfilterQueue()
    server: ControlServer | None = None
    try:
        nfq.bind(args.queue, make_callback(engine, timer, zeroer), max_len=4096)
        server = ControlServer(engine, args.name)
        server.extra_stats = lambda: {**timer.stats(), "conntrack": zeroer.stats()}
        # Everything imported so far lives as long as the process: keep it out of the
        # collector's scans, and collect young objects less often (fewer pauses on the
        # packet path; per-connection state has no reference cycles).
        gc.freeze()
        gc.set_threshold(20000, 20, 20)
        print("ready", flush=True)
        serve(nfq, server, engine)
    except Stop:
        return 0
    except BrokenPipeError:
        # The run that started us died before reading our ready line: nobody is left to
        # serve (its parent-death signal is on the way); exit without a traceback.
        return 1
    finally:
        nfq.unbind()
        if server is not None:
            server.close()
        if args.stats_out:
            final = {**engine.stats(), **timer.stats(), "conntrack": zeroer.stats()}
            Path(args.stats_out).write_text(json.dumps(final, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
