"""The per-host TCP-ENO hook: `python -m testbed.eno.hook --queue N`.

The role the tcpcrypt reference daemon played: iptables rules (rules.py) queue this host's
handshake-phase TCP segments to NFQUEUE ``N``; this process hands each one to ``HookEngine``
(engine.py), which adds, reads and checks the ENO option exactly as the pure core decides, and
gives every packet a verdict (always a release, NF_REPEAT with a mark bit that the rules
recognise, marks.py; possibly rewritten). Local applications talk to it
over the control channel (control.py): an abstract AF_UNIX socket, root only.

One thread, one epoll loop (``selectors``) over the queue's netlink socket, the control
socket and its clients; queued packets are served before control messages, so a verdict is
never late because of an application. Outgoing segments get their verdict after the engine
(it may add ENO); incoming ones are only read (except SYN data that §4.7 says to discard), so
they are released first and read after, off the kernel's path.

A new connection's SYN also zeroes the packet counters of a conntrack entry it reopened
(ctzero.py), which the rules' windows count with.

Contract with ``Network.start_helper`` (the helper skeleton, testbed/helperproc.py): prints
``ready`` once the queue is bound and the control socket listens; SIGTERM/SIGINT raise ``Stop``
(a signal during a packet callback is held until the verdict is given), the queue is unbound,
``--stats-out`` is written and the exit code is 0; live stats come over the control channel.
The rules use ``--queue-bypass``: if this process is gone, segments go through untouched and
connections fall back to plain TCP (the peer sees no ENO, RFC 8547 §4.6) instead of stalling.
"""

from __future__ import annotations

import argparse
import array
import gc
import json
import logging
import resource
import selectors
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testbed import helperproc
from testbed.eno.control import (
    DEFAULT_NAME,
)
from testbed.eno.controlserver import ControlServer
from testbed.eno.ctzero import CounterZeroer
from testbed.eno.engine import HookEngine
from testbed.eno.marks import RELEASED
from testbed.packet import PacketError, Segment, parse_segment

logger = logging.getLogger("tcpinc.eno.hook")

NF_INET_LOCAL_OUT = 3  # netfilter hook numbers (linux/netfilter.h): OUTPUT is outgoing
TIMING_SAMPLES = 8192  # most recent per-packet callback times kept for median / p99
EXPIRY_TICK = 0.5


# A signal during a packet callback is held until the verdict has been given.
_GATE = helperproc.StopGate()


class PacketTimer:
    """Wall time spent per packet callback, and the process's CPU time and memory (for the
    report). The most recent samples live in a ring allocated once, so a busy hook allocates
    nothing per packet here and its memory figures show only what connections leave behind."""

    def __init__(self) -> None:
        self._ring = array.array("q", bytes(8 * TIMING_SAMPLES))
        self.total_ns = 0
        self.count = 0

    @property
    def samples(self) -> list[int]:
        """The most recent callback times (ns), at most TIMING_SAMPLES, in no order."""
        return list(self._ring[:min(self.count, TIMING_SAMPLES)])

    def add(self, elapsed_ns: int) -> None:
        self._ring[self.count % TIMING_SAMPLES] = elapsed_ns
        self.total_ns += elapsed_ns
        self.count += 1

    def stats(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        ordered = sorted(self.samples)
        # A full collection first: unreachable cycles waiting for the next one (the young
        # generation's threshold is 20,000 here) and the interpreter's free lists (emptied by
        # a full collection) are not live objects, and moved the count by hundreds of blocks
        # between two reads with no leak (+302 over 1,200 connections in a CI run). Stats are
        # read on request only (tests; `tcpinc bench eno-hook` before and after its rounds),
        # never per packet.
        gc.collect()
        out: dict[str, Any] = {
            "callbacks": self.count,
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 6),
            "rss_kib": _rss_kib(),
            # Blocks the Python allocator holds for live objects after that collection: what a
            # leak of objects grows, unlike RSS, which also moves with arena fragmentation and
            # the C heap.
            "py_blocks": sys.getallocatedblocks(),
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
    engine: HookEngine, timer: PacketTimer, zeroer: CounterZeroer | None = None,
    control: ControlServer | None = None,
) -> Callable[[Any], None]:
    """The NFQUEUE callback: every packet is released (``_release``), rewritten when the
    engine says so. With ``zeroer``, a SYN reaching a listener for a new connection first has
    the counters of a reopened conntrack entry zeroed, while the kernel still holds it
    (ctzero.py). The engine's other actions are performed here (``_perform``)."""

    def callback(packet: Any) -> None:
        start = time.perf_counter_ns()
        _GATE.busy = True
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
            new = _perform(engine, raw, outgoing, zeroer, control)
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
            _GATE.busy = False
            timer.add(time.perf_counter_ns() - start)

    return callback


def _perform(
    engine: HookEngine, raw: bytes, outgoing: bool, zeroer: CounterZeroer | None,
    control: ControlServer | None,
) -> bytes | None:
    """The engine's actions for one segment (engine.Actions); returns the rewritten segment."""
    actions = engine.process(raw, outgoing, time.monotonic())
    if actions.read_control:
        if control is not None:
            control.drain()  # a one-way announcement or answer may still sit there
        actions = engine.process(raw, outgoing, time.monotonic(), control_read=True)
    if actions.zero is not None and zeroer is not None:
        zeroer.zero(actions.zero)  # an active open's SYN, still held
    if control is not None:
        for key in actions.decided:
            control.decided(key)
    return actions.payload


def _release(packet: Any) -> None:
    """The verdict on every held segment: NF_REPEAT with the ``RELEASED`` packet-mark bit,
    so the rules let it go on instead of queueing it again (marks.py)."""
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
    rules' windows; active opens are zeroed from the engine's actions (``_perform``)."""
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
    next_expiry = time.monotonic() + EXPIRY_TICK
    while True:
        now = time.monotonic()
        timeout = max(0.0, min(next_expiry, server.next_deadline()) - now)
        events = selector.select(timeout)
        if any(key.data is nfq for key, _ in events):
            nfq.run(block=False)
            _GATE.check()
        now = time.monotonic()
        for key, _ in events:
            if key.data is server:
                server.ready(key.fileobj, now)
        server.tick(now)
        if now >= next_expiry:
            engine.expire(now)
            next_expiry = now + EXPIRY_TICK


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queue", type=int, required=True, help="NFQUEUE number")
    parser.add_argument("--name", default=DEFAULT_NAME, help="abstract control socket name")
    parser.add_argument("--expiry", type=float, default=30.0, help="idle seconds per entry")
    parser.add_argument("--max-conns", type=int, default=65536)
    parser.add_argument("--mtu", type=int, default=1500)
    parser.add_argument("--stats-out", default=None, help="write final stats JSON here")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2), stream=sys.stderr,
                        format="%(asctime)s eno-hook %(levelname)s %(message)s")
    from netfilterqueue import NetfilterQueue  # imported here: unit tests need no NFQUEUE

    engine = HookEngine(expiry=args.expiry, max_conns=args.max_conns, mtu=args.mtu)
    zeroer = CounterZeroer()
    timer = PacketTimer()
    held: dict[str, Any] = {}

    def start_and_serve() -> None:
        nfq = held["nfq"] = NetfilterQueue()
        server = held["server"] = ControlServer(engine, args.name)
        nfq.bind(args.queue, make_callback(engine, timer, zeroer, server), max_len=4096)
        server.extra_stats = lambda: {**timer.stats(), "conntrack": zeroer.stats()}
        # Everything imported so far lives as long as the process: keep it out of the
        # collector's scans, and collect young objects less often (fewer pauses on the
        # packet path; per-connection state has no reference cycles).
        gc.freeze()
        gc.set_threshold(20000, 20, 20)
        helperproc.announce_ready()
        serve(nfq, server, engine)

    def teardown() -> None:
        if "nfq" in held:
            held["nfq"].unbind()
        if "server" in held:
            held["server"].close()

    def dump(_final: bool, _error: str | None) -> None:
        if args.stats_out:
            final = {**engine.stats(), **timer.stats(), "conntrack": zeroer.stats()}
            Path(args.stats_out).write_text(json.dumps(final, indent=1))

    # BrokenPipeError: the run that started us died before reading our ready line; nobody is
    # left to serve (its parent-death signal is on the way): exit 1 without a traceback.
    error = helperproc.run(start_and_serve, dump=dump, teardown=teardown, announce=False,
                           errors=(BrokenPipeError,), live_stats=False, on_stop=_GATE.handler)
    return 1 if error is not None else 0


if __name__ == "__main__":
    sys.exit(main())
