"""Which per-packet path runs a shaped link: the compiled delay line or the Python one.

The compiled helper (testbed/net/delayline_c/, built by ``make setup`` with gcc into
``testbed/net/delayline_c/tcpinc-delayline``) is the delay line; the Python one
(testbed/net/delayline.py) remains only as a fallback for a machine where the build is missing.
Like the link backend, the choice is resolved once per network, logged as one line when it falls
back, and recorded (``delay_helper`` in records and metadata, the cause in
``delay_helper_note``).

A link shape the helper cannot honour (beyond :data:`LIMITS`) is refused before any namespace
exists, with one line naming the limit.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from testbed.errors import ConfigError, KernelFeatureError
from topologies.shapes import LinkShape

HELPERS = ("auto", "c", "python")
BINARY = Path(__file__).resolve().parent / "delayline_c" / "tcpinc-delayline"

# Mirrors model.h (DL_MAX_*); `tcpinc-delayline --limits` prints them and a unit test checks
# that both agree.
LIMITS = {
    "max_delay_ns": 60_000_000_000,
    "min_rate_bps": 1000,
    "max_rate_bps": 400_000_000_000,
    "max_queue_packets": 1_000_000,
}
TOTAL_SPIN_BUDGET = 0.5  # CPU fraction all delay lines of a network may busy-poll together
MAX_SPIN_BUDGET = 0.25  # per delay line
# Lines read through a PACKET_RX_RING (32 MB of kernel memory each: ring.c), with one thread per
# direction (main.c), only in a network of at most this many: a large network's many lines stay
# small (the fan-in memory target) and its threads few.
RX_RING_MAX_LINES = 4


@dataclass(frozen=True)
class HelperChoice:
    name: str  # "c" or "python"
    note: str | None = None  # why the fallback was taken


def resolve(requested: str = "auto", binary: Path = BINARY) -> HelperChoice:
    """``auto`` -> ``c`` when the compiled helper is there, else ``python`` with the cause."""
    if requested not in HELPERS:
        raise ConfigError(f"unknown delay helper {requested!r}", f"choose from {HELPERS}")
    if requested == "python":
        return HelperChoice("python", "requested")
    if binary.is_file() and os.access(binary, os.X_OK):
        stale = newer_sources(binary)
        if stale:
            # Its command line may no longer be the one c_argv writes: a clear error, not a
            # line that dies on an unknown argument (nor a silent switch to the fallback).
            raise KernelFeatureError(f"compiled delay line {binary} is older than its sources "
                                     f"({', '.join(stale)})", "run `make helper` to rebuild it")
        return HelperChoice("c")
    cause = f"compiled delay line {binary} is missing (run `make setup` to build it with gcc)"
    if requested == "c":
        raise KernelFeatureError(cause, "or use --delay-helper python")
    return HelperChoice("python", f"{cause}; using the Python delay line")


def newer_sources(binary: Path) -> list[str]:
    """The helper's sources (beside it) changed since it was built, as make would see them."""
    built = binary.stat().st_mtime
    return sorted(p.name for p in binary.parent.iterdir()
                  if (p.suffix in (".c", ".h") or p.name == "Makefile")
                  and p.stat().st_mtime > built)


def check_shape(link: str, direction: str, shape: LinkShape) -> None:
    """Refuse a shape beyond the helper's limits (before the network is built)."""
    where = f"link {link} ({direction})"
    for what, value in (("delay", shape.delay_ms), ("jitter", shape.jitter_ms)):
        if value * 1e6 > LIMITS["max_delay_ns"]:
            raise ConfigError(f"{where}: {what} {value:g} ms exceeds the delay line's "
                              f"{LIMITS['max_delay_ns'] / 1e9:g} s", f"use a {what} <= 60 s")
    rate = shape.rate_bps
    if rate is not None and not LIMITS["min_rate_bps"] <= rate <= LIMITS["max_rate_bps"]:
        raise ConfigError(f"{where}: rate {rate} bit/s outside the delay line's "
                          f"{LIMITS['min_rate_bps']}..{LIMITS['max_rate_bps']} bit/s",
                          "use a rate between 1kbit and 400gbit")
    queue = shape.queue_packets
    if queue is not None and queue > LIMITS["max_queue_packets"]:
        raise ConfigError(f"{where}: queue {queue} packets exceeds the delay line's "
                          f"{LIMITS['max_queue_packets']}", "use a queue <= 1000000 packets")


def shape_arg(shape: LinkShape) -> str:
    """One direction in the compiled helper's ``--a2b``/``--b2a`` syntax (integer ns)."""
    return (f"delay_ns={round(shape.delay_ms * 1e6)},jitter_ns={round(shape.jitter_ms * 1e6)},"
            f"loss={shape.loss!r},rate_bps={shape.rate_bps or 0},"
            f"queue_packets={shape.queue_packets or 0},queue_bytes=0")


def threads(lines: int) -> int:
    """Worker threads of each compiled line in a network of ``lines``: one per direction in a
    small network, one for both in a large one."""
    return 2 if lines <= RX_RING_MAX_LINES else 1


def line_cpus(index: int, lines: int, allowed: Sequence[int]) -> list[int]:
    """The CPUs the workers of the ``index``-th of ``lines`` compiled lines run on (its
    ``--cpus``): every line's workers take the next CPUs of ``allowed`` in turn, so a worker
    stays on one CPU and the workers spread over all. A worker that moved between CPUs could
    deliver frames out of the order it sent them (testbed/net/delayline_c/main.c, --cpus)."""
    cpus = sorted(set(allowed))
    if not cpus:
        raise ConfigError("no CPU to run the delay lines on", "check the process's affinity")
    n = threads(lines)
    return [cpus[(index * n + i) % len(cpus)] for i in range(min(n, len(cpus)))]


def spin_budget(lines: int) -> float:
    """Per-line busy-poll budget: all lines together stay within TOTAL_SPIN_BUDGET of a CPU."""
    return round(min(MAX_SPIN_BUDGET, TOTAL_SPIN_BUDGET / max(1, lines)), 4)


def c_argv(if_a: str, if_b: str, a2b: LinkShape, b2a: LinkShape, seed: int, stats: Path,
           lines: int, binary: Path = BINARY, parent_pid: int | None = None,
           send_lead: str = "auto", cpus: Sequence[int] = ()) -> list[str]:
    """The compiled helper's command line; with ``parent_pid`` it stops by itself when that
    process (its parent) dies, so the starter needs no pre-exec hook (no fork of Python); with
    ``cpus`` (from :func:`line_cpus`) each worker stays on its CPU."""
    return [str(binary), "--if-a", if_a, "--if-b", if_b, "--a2b", shape_arg(a2b),
            "--b2a", shape_arg(b2a), "--seed", str(seed), "--stats", str(stats),
            "--spin-budget", str(spin_budget(lines)),
            "--rx-ring", "on" if lines <= RX_RING_MAX_LINES else "off",
            "--threads", str(threads(lines)),
            "--send-lead", send_lead,
            *(["--cpus", ",".join(map(str, cpus))] if cpus else []),
            *(["--parent-pid", str(parent_pid)] if parent_pid else [])]


def effective_send_lead(requested: str, helper: str) -> str:
    """The send lead a line of ``helper`` applies: the one asked for on the compiled line,
    ``off`` on the Python one, which has none (testbed/net/delayline_c/txstamp.c)."""
    return requested if helper == "c" else "off"
