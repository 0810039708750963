"""Userspace delay line: a transparent L2 wire between two interfaces (delay, jitter, loss, rate).

Run inside the shaper namespace of a link a <-> b (two interfaces, no IP):

    python -m testbed.net.delayline --if-a IF0 --if-b IF1 --a2b JSON --b2a JSON --seed N \
        --stats PATH

This kernel has neither sch_netem nor sch_fq, so delay cannot come from a qdisc
(docs/platform.md §2). Design "A + vnet" from those notes:

- One AF_PACKET raw socket per interface with PACKET_VNET_HDR, so GSO super-frames and partial
  checksums are read and re-sent unchanged (no offload change on the end hosts, about 3x the
  throughput of MTU frames); PACKET_IGNORE_OUTGOING so a socket never re-reads what we sent.
- One thread, ``select()`` (microsecond timeout) on both sockets with the earliest due time as the
  deadline. It sleeps until ``deadline - spin`` and then busy-polls (zero timeout), because the
  wake-up from a timed sleep is late by 15-70 us even with a 1 ns timer slack; the polling is
  capped to a fraction of wall time (:class:`~testbed.net.delayline_sched.SpinBudget`).
- A frame's arrival time is its kernel receive timestamp, so our own wake-up latency becomes
  part of the configured delay instead of being added to it.
- Per-direction FIFO of (due, received, frame); due times come from the pure
  :class:`~testbed.net.delayline_sched.DirectionScheduler` and never decrease, so no heap is needed.

Contract with the network builder: prints ``ready`` once the sockets are bound; SIGTERM/SIGINT stop
it, write ``--stats`` atomically and exit 0; SIGUSR1 writes the stats and continues; bad input is
one line on stderr and exit code 2; a runtime OS error (e.g. no CAP_NET_RAW) exits 1.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import errno
import json
import math
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from testbed import helperproc
from testbed.errors import ConfigError
from testbed.net.delayline_sched import (
    VNET_HDR_LEN,
    DirectionScheduler,
    Reservoir,
    Shape,
    SpinBudget,
    wire_bytes,
)

# Linux ABI constants the socket module does not export.
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
ETH_P_ALL = 0x0003
PR_SET_TIMERSLACK = 29
SO_TIMESTAMPNS = 35  # SO_TIMESTAMPNS_OLD: struct timespec with 64-bit fields on 64-bit hosts

_TIMESPEC = struct.Struct("@qq")
_TPACKET_STATS = struct.Struct("@II")  # struct tpacket_stats: tp_packets, tp_drops
_ANC_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)
_MAX_RX_AGE = 10.0  # s; an older "arrival" is not a receive time (or we are hopelessly late)

# 64 KiB GSO frames are the veth default (gso_max_size); BIG TCP could exceed it, so leave headroom
# and detect truncation with MSG_TRUNC instead of forwarding a cut frame.
RECV_BUFFER = 256 * 1024 + VNET_HDR_LEN
SOCKET_BUFFER = 32 * 1024 * 1024
MAX_SLEEP = 0.010  # s; longest single select() sleep, so its kernel slack stays <= 10 us
STATS_VERSION = 1


def set_timer_slack(nanoseconds: int) -> bool:
    """Shrink the kernel's timer slack (default 50 us) so select() wakes up when asked."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_TIMERSLACK, ctypes.c_ulong(nanoseconds), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def open_port(ifname: str, kernel_ts: bool = True,
              buffer_bytes: int = SOCKET_BUFFER) -> socket.socket:
    """A non-blocking raw socket on one interface that reads and writes vnet-header frames."""
    # Protocol 0 until bind: a socket created with ETH_P_ALL would queue frames from every
    # interface of the namespace before it is bound to ours.
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, buffer_bytes)
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, buffer_bytes)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, int(kernel_ts))
        sock.bind((ifname, ETH_P_ALL))  # CPython applies htons() to the protocol
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


class Direction:
    """IO side of one direction: reads ``rx``, holds the FIFO, writes ``tx``, keeps counters."""

    def __init__(self, name: str, rx: socket.socket, tx: socket.socket,
                 sched: DirectionScheduler, batch: int) -> None:
        self.name = name
        self._buf = bytearray(RECV_BUFFER)
        self._view = memoryview(self._buf)
        self.rx = rx
        self.tx = tx
        self.sched = sched
        self.batch = batch
        self.fifo: collections.deque[tuple[float, float, bytes]] = collections.deque()
        self.delay = Reservoir()
        self.lateness = Reservoir()
        self.frames_in = self.bytes_in = self.wire_bytes_in = 0
        self.frames = self.bytes = 0
        self.gso_frames = self.gso_frames_lossy = 0
        self.dropped_tx = self.dropped_trunc = 0
        self.dropped_tx_errno: collections.Counter[str] = collections.Counter()
        self.rx_errors: collections.Counter[str] = collections.Counter()
        self.rx_ts_fallback = 0
        self.dropped_rcvbuf = 0

    def poll_kernel_drops(self) -> None:
        """Add the frames the kernel dropped because our receive buffer was full (we were too
        slow). PACKET_STATISTICS resets on read, so the total is accumulated here."""
        try:
            raw = self.rx.getsockopt(SOL_PACKET, PACKET_STATISTICS, _TPACKET_STATS.size)
        except OSError as exc:
            self._rx_error(f"PACKET_STATISTICS:{_errno_name(exc)}")
            return
        self.dropped_rcvbuf += _TPACKET_STATS.unpack(raw)[1]

    def drain(self, stop_at: float) -> float:
        """Read up to ``batch`` frames; stop early once a frame is due. Returns the new deadline.

        A frame arrives at its kernel receive timestamp (SO_TIMESTAMPNS, CLOCK_REALTIME mapped to
        CLOCK_MONOTONIC): the time it waited for our wake-up or batch is part of its delay, not
        added on top (up to ~1 us per frame; removes +0.1 ms per direction on a slow-waking VM)."""
        recvmsg_into, admit, fifo = self.rx.recvmsg_into, self.sched.admit, self.fifo
        bufs, view, clock, unpack = [self._buf], self._view, time.monotonic, _TIMESPEC.unpack
        size = len(self._buf)
        offset_ns = time.time_ns() - time.monotonic_ns()
        # Counters stay local in this per-frame loop (attribute updates cost ~50 ns each).
        frames = nbytes = nwire = gso = 0
        for _ in range(self.batch):
            try:
                n, anc, _flags, _addr = recvmsg_into(bufs, _ANC_SPACE, socket.MSG_TRUNC)
            except BlockingIOError:
                break
            except OSError as exc:  # e.g. ENETDOWN on a link flap: count it, the socket lives on
                self._rx_error(_errno_name(exc))
                break
            now = arrived = clock()
            if anc:
                sec, nsec = unpack(anc[0][2])
                arrived = (sec * 1_000_000_000 + nsec - offset_ns) * 1e-9
                if not now - _MAX_RX_AGE < arrived <= now:  # clock step or foreign tstamp
                    self.rx_ts_fallback += 1
                    arrived = now
            if n > size:
                self.dropped_trunc += 1
                continue
            frame = bytes(view[:n])
            if frame[1]:  # gso_type != NONE: parse the vnet header
                wire, segments = wire_bytes(frame)
                gso += segments > 1
            else:
                wire, segments = n - VNET_HDR_LEN, 1
            frames += 1
            nbytes += n - VNET_HDR_LEN
            nwire += wire
            due = admit(arrived, n - VNET_HDR_LEN, wire, segments)
            if due is None:
                continue
            fifo.append((due, arrived, frame))
            if due < stop_at:
                stop_at = due
            if now >= stop_at:
                break
        self._count_batch(frames, nbytes, nwire, gso)
        return stop_at

    def _count_batch(self, frames: int, nbytes: int, nwire: int, gso: int) -> None:
        """Add one ``drain`` batch's counts (kept in locals inside its per-frame loop)."""
        self.frames_in += frames
        self.bytes_in += nbytes
        self.wire_bytes_in += nwire
        self.gso_frames += gso
        if self.sched.shape.loss > 0.0:
            self.gso_frames_lossy += gso

    def _rx_error(self, label: str) -> None:
        self.rx_errors[label] += 1

    def release(self, now: float) -> float:
        """Send every frame due by ``now`` (re-reading the clock after each send)."""
        fifo, send, clock = self.fifo, self.tx.send, time.monotonic
        add_delay, add_lateness = self.delay.add, self.lateness.add
        frames = nbytes = 0
        while fifo and fifo[0][0] <= now:
            due, received, frame = fifo.popleft()
            try:
                nbytes += send(frame)
            except OSError as exc:  # ENOBUFS, EAGAIN, ENETDOWN...: a drop, never silent
                self.dropped_tx += 1
                self.dropped_tx_errno[_errno_name(exc)] += 1
            else:
                frames += 1
                add_delay(now - received)
                add_lateness(now - due)
            now = clock()
        self.frames += frames
        self.bytes += nbytes - frames * VNET_HDR_LEN
        return now

    def snapshot(self) -> dict[str, Any]:
        sched = self.sched
        return {
            "shape": sched.shape.to_dict(),
            "warnings": sched.shape.warnings()
            + ([f"{self.gso_frames_lossy} GSO super-frames on a lossy link: a loss drops all "
                "their segments at once (disable GSO on the sender)"]
               if self.gso_frames_lossy else []),
            "frames_in": self.frames_in,
            "bytes_in": self.bytes_in,
            "wire_bytes_in": self.wire_bytes_in,
            "frames": self.frames,
            "bytes": self.bytes,
            "gso_frames": self.gso_frames,
            "gso_frames_lossy": self.gso_frames_lossy,
            "dropped_loss": sched.dropped_loss,
            "dropped_queue": sched.dropped_queue,
            "dropped_tx": self.dropped_tx,
            "dropped_tx_errno": dict(self.dropped_tx_errno),
            "dropped_trunc": self.dropped_trunc,
            "dropped_rcvbuf": self.dropped_rcvbuf,
            "rx_errors": dict(self.rx_errors),
            "rx_ts_fallback": self.rx_ts_fallback,
            "in_flight": len(self.fifo),
            "delay_ms": self.delay.summary(scale=1e3, digits=4),
            "lateness_us": self.lateness.summary(scale=1e6, digits=1),
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class Config:
    if_a: str
    if_b: str
    a2b: Shape
    b2a: Shape
    seed: int
    stats: str | None
    spin_us: float
    batch: int
    kernel_ts: bool = True
    spin_budget: float = 0.1


class DelayLine:
    """Both directions of one link and the select() loop that drives them."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.sock_a = open_port(cfg.if_a, cfg.kernel_ts)
        try:
            self.sock_b = open_port(cfg.if_b, cfg.kernel_ts)
        except OSError:
            self.sock_a.close()
            raise
        self.a2b = Direction("a2b", self.sock_a, self.sock_b,
                             DirectionScheduler.seeded(cfg.a2b, cfg.seed, 0), cfg.batch)
        self.b2a = Direction("b2a", self.sock_b, self.sock_a,
                             DirectionScheduler.seeded(cfg.b2a, cfg.seed, 1), cfg.batch)
        self.timer_slack_set = set_timer_slack(1)
        self.started = time.monotonic()
        self.spin = SpinBudget(cfg.spin_us / 1e6, cfg.spin_budget, now=self.started)
        self._cpu0 = os.times()

    def close(self) -> None:
        self.sock_a.close()
        self.sock_b.close()

    def run(self) -> NoReturn:
        """Forward forever; leaves only by an exception (Stop from a signal, or an OS error).

        A stop signal is taken only while the line waits in select (``_GATE``): one that
        comes while frames are released or read waits until the batch is counted. Raised
        inside the batch it lost the batch's counts, which the final stats must hold (a frame
        sent but not counted, seen when the test stopped the line right after the last frame
        it released woke the receiver)."""
        dirs = (self.a2b, self.b2a)
        reader = {self.sock_a.fileno(): self.a2b, self.sock_b.fileno(): self.b2a}
        rlist = list(reader)
        spin, clock = self.spin, time.monotonic
        while True:
            _GATE.busy = True
            now = clock()
            deadline = math.inf
            for d in dirs:
                fifo = d.fifo
                if fifo and fifo[0][0] <= now:
                    now = d.release(now)
                if fifo and fifo[0][0] < deadline:
                    deadline = fifo[0][0]
            # Sleep until `lead` before the deadline, then poll with a zero timeout (busy-wait).
            # Sleeps are capped: the kernel lets select() overshoot by timeout/1000 whatever the
            # timer slack (fs/select.c, select_estimate_accuracy), i.e. 100 us for a 100 ms sleep.
            if deadline == math.inf:
                timeout = None
            else:
                wait, lead = deadline - now, spin.lead(now)
                timeout = min(wait - lead, MAX_SLEEP) if wait > lead else 0.0
            _GATE.busy = False
            _GATE.check()
            ready = select.select(rlist, (), (), timeout)[0]
            _GATE.busy = True
            if timeout == 0.0:
                spin.charge(clock() - now)
            for fd in ready:
                deadline = reader[fd].drain(deadline)

    def snapshot(self, final: bool, error: str | None = None) -> dict[str, Any]:
        cpu = os.times()
        self.a2b.poll_kernel_drops()
        self.b2a.poll_kernel_drops()
        user, system = cpu.user - self._cpu0.user, cpu.system - self._cpu0.system
        frames = self.a2b.frames_in + self.b2a.frames_in
        return {
            "version": STATS_VERSION,
            "final": final,
            "error": error,
            "pid": os.getpid(),
            "if_a": self.cfg.if_a,
            "if_b": self.cfg.if_b,
            "seed": self.cfg.seed,
            "spin_us": self.cfg.spin_us,
            "spin_budget": self.cfg.spin_budget,
            "spin_s": round(self.spin.spent, 3),
            "batch": self.cfg.batch,
            "rx_timestamps": "kernel" if self.cfg.kernel_ts else "user",
            "timer_slack_1ns": self.timer_slack_set,
            "wall_s": round(time.monotonic() - self.started, 6),
            "cpu_user_s": round(user, 3),
            "cpu_system_s": round(system, 3),
            "cpu_s": round(user + system, 3),
            "cpu_us_per_frame": round((user + system) * 1e6 / frames, 3) if frames else None,
            "directions": {"a2b": self.a2b.snapshot(), "b2a": self.b2a.snapshot()},
        }


def write_json_atomic(path: str, data: dict[str, Any]) -> None:
    """Write to a temp file in the same directory, then rename: readers never see half a file."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --- command line ----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints usage plus the error; the contract is one line, exit 2 (see main()).
        raise ConfigError(message)


def _build_parser() -> _Parser:
    p = _Parser(prog="python -m testbed.net.delayline", description=__doc__.split("\n\n")[0])
    p.add_argument("--if-a", required=True, help="interface towards host a")
    p.add_argument("--if-b", required=True, help="interface towards host b")
    p.add_argument("--a2b", required=True, help="shape JSON for frames a -> b")
    p.add_argument("--b2a", required=True, help="shape JSON for frames b -> a")
    p.add_argument("--seed", type=int, default=0, help="loss/jitter seed (direction adds 0/1)")
    p.add_argument("--stats", help="stats JSON path, written on SIGUSR1 and on exit")
    p.add_argument("--spin-us", type=float, default=150.0,
                   help="busy-poll this long before each due time (default 150)")
    p.add_argument("--spin-budget", type=float, default=0.1,
                   help="max fraction of wall time spent busy-polling (default 0.1)")
    p.add_argument("--batch", type=int, default=64, help="max frames read per socket per wakeup")
    p.add_argument("--rx-timestamps", choices=("kernel", "user"), default="kernel",
                   help="arrival time of a frame: kernel receive timestamp (default) or our read")
    return p


def parse_config(argv: Sequence[str] | None) -> Config:
    """Parse and validate everything that can be checked before opening sockets."""
    ns = _build_parser().parse_args(argv)
    a2b, b2a = Shape.from_json(ns.a2b), Shape.from_json(ns.b2a)
    if ns.if_a == ns.if_b:
        raise ConfigError(f"--if-a and --if-b are the same interface {ns.if_a!r}")
    if ns.stats is not None and not os.path.isdir(os.path.dirname(os.path.abspath(ns.stats))):
        raise ConfigError(f"directory of --stats {ns.stats!r} does not exist")
    if ns.spin_us < 0 or ns.batch < 1 or not 0.0 <= ns.spin_budget <= 1.0:
        raise ConfigError("need --spin-us >= 0, --batch >= 1 and 0 <= --spin-budget <= 1")
    for name in (ns.if_a, ns.if_b):  # last: the only check that depends on the namespace
        try:
            socket.if_nametoindex(name)
        except OSError as exc:
            raise ConfigError(f"unknown interface {name!r} in this namespace") from exc
    return Config(if_a=ns.if_a, if_b=ns.if_b, a2b=a2b, b2a=b2a, seed=ns.seed, stats=ns.stats,
                  spin_us=ns.spin_us, batch=ns.batch, kernel_ts=ns.rx_timestamps == "kernel",
                  spin_budget=ns.spin_budget)


# A stop signal during a batch waits until its counts are in (``DelayLine.run``).
_GATE = helperproc.StopGate()


def _serve(line: DelayLine, stats: str | None) -> int:
    """Announce readiness, forward until a stop signal, write final stats (the helper
    skeleton, testbed/helperproc.py). Returns the exit code."""

    def dump(final: bool, error: str | None = None) -> None:
        if stats is not None:
            write_json_atomic(stats, line.snapshot(final, error))

    error = helperproc.run(line.run, dump=dump, errors=(OSError,), on_stop=_GATE.handler)
    if error is not None:
        print(f"delayline: error: {error}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
    except ConfigError as exc:
        print(f"delayline: error: {exc.one_line()}", file=sys.stderr)
        return 2
    try:
        line = DelayLine(cfg)
    except OSError as exc:  # EPERM without CAP_NET_RAW, ENODEV if the interface just vanished
        print(f"delayline: error: opening sockets on {cfg.if_a}/{cfg.if_b}: {exc}",
              file=sys.stderr)
        return 1
    try:
        return _serve(line, cfg.stats)
    finally:
        line.close()


if __name__ == "__main__":
    sys.exit(main())
