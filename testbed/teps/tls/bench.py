"""In-memory benchmarks of the TLS TEP engine: handshake rate, CPU per side, bulk throughput.

Both engines run in this process, joined without sockets, so the figures are OpenSSL plus this
engine's Python glue, with no network or kernel time. CPU seconds come from
``time.process_time`` taken around each side's own calls (one thread, so every tick belongs to
the side that was running); rates use ``time.perf_counter`` wall time. Functions return dicts
and print nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from testbed.teps import benchflights
from testbed.teps.base import Role, TepContext
from testbed.teps.tls.constants import CIPHERSUITES
from testbed.teps.tls.core import TlsCore
from testbed.teps.tls.identity import ServerIdentity
from testbed.teps.tls.pair import EXAMPLE_TRANSCRIPT
from testbed.teps.tls.session_cache import TlsSessionCache

_T = TypeVar("_T")


class _CpuClock:
    """Accumulates process CPU time spent inside the calls it runs, in total and per flight of
    the current handshake (``steps``). ``flight`` begins a flight (a side's start, the arrival
    of the peer's bytes) after ``idle_s`` of sleep, untimed: on a path each flight follows
    about one round trip of waiting."""

    def __init__(self, idle_s: float = 0.0) -> None:
        self.seconds = 0.0
        self.idle_s = idle_s
        self.slept = 0.0  # wall seconds spent in those sleeps
        self.steps: list[float] = []

    def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        start = time.process_time()
        try:
            return fn(*args)
        finally:
            spent = time.process_time() - start
            self.seconds += spent
            if self.steps:
                self.steps[-1] += spent

    def flight(self, *, idle: bool = True) -> None:
        if idle:
            self.slept += benchflights.idle(self.idle_s)
        self.steps.append(0.0)


def _cores(
    client_options: dict[str, Any], server_options: dict[str, Any], client: _CpuClock,
    server: _CpuClock,
) -> tuple[TlsCore, TlsCore]:
    a = client.run(TlsCore, TepContext(Role.A, EXAMPLE_TRANSCRIPT, options=client_options))
    b = server.run(TlsCore, TepContext(Role.B, EXAMPLE_TRANSCRIPT, options=server_options))
    return a, b


def _one_handshake(a: TlsCore, b: TlsCore, client: _CpuClock, server: _CpuClock) -> None:
    """Run until both ends are done and the link is quiet (tickets delivered too)."""
    client.run(a.start, 0.0)
    server.run(b.start, 0.0)
    for round_ in range(20):
        moved = False
        data = client.run(a.data_to_send)
        if data:
            # On a path the server's core is made as the connection is accepted, and the
            # ClientHello arrives with the ACK that completes it: one idle period for both.
            server.flight(idle=round_ > 0)
            server.run(b.receive_data, data, 0.0)
            moved = True
        data = server.run(b.data_to_send)
        if data:
            client.flight()
            client.run(a.receive_data, data, 0.0)
            moved = True
        if not moved and a.handshake_complete and b.handshake_complete:
            return
    raise RuntimeError("benchmark handshake did not finish")


def _close(a: TlsCore, b: TlsCore) -> None:
    # Untimed. A clean close keeps the server's session (OpenSSL drops it otherwise).
    a.close()
    b.close()
    b.receive_data(a.data_to_send(), 0.0)
    a.receive_data(b.data_to_send(), 0.0)


def handshakes(
    count: int = 200,
    *,
    resumed: bool = False,
    early_data: bytes = b"",
    key_type: str = "ecdsa-p256",
    idle_s: float = 0.0,
) -> dict[str, Any]:
    """``count`` in-memory handshakes: full, or resumed from tickets (optionally 0-RTT).

    Returns handshakes per second (wall) and client and server CPU seconds per handshake.
    Each measured handshake covers core creation up to the server's tickets being read.
    ``*_cpu_s_per_flight``: the median CPU of each side's flights in order (the first one
    creates and starts the side's core). ``idle_s``: each side sleeps that long (untimed, and
    left out of the wall time) before every flight it begins or receives, as an endpoint
    waits about one RTT between flights on a path; the CPU a flight takes after such idleness
    is the cold figure that `tcpinc bench endpoints` sets beside the host time
    (testbed/bench_endpoints.py).
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    if idle_s < 0:
        raise ValueError("idle_s must be >= 0")
    if early_data and not resumed:
        raise ValueError("early_data needs resumed=True")
    identity = ServerIdentity(
        key_type, resumption=resumed, max_early_data=16384 if early_data else 0
    )
    cache = TlsSessionCache()
    client_options: dict[str, Any] = {"session_cache": cache} if resumed else {}
    if early_data:
        client_options["early_data"] = early_data
    server_options = {"server_identity": identity}
    if resumed:  # one untimed full handshake fills the cache
        warm_a, warm_b = _cores(client_options, server_options, _CpuClock(), _CpuClock())
        _one_handshake(warm_a, warm_b, _CpuClock(), _CpuClock())
        _close(warm_a, warm_b)
    client, server = _CpuClock(idle_s), _CpuClock(idle_s)
    resumed_count = accepted = 0
    wall = 0.0
    steps: tuple[list[list[float]], list[list[float]]] = ([], [])
    for _ in range(count):
        start = time.perf_counter()
        client.steps, server.steps = [], []
        client.flight()  # the first flight of each side: its core, its start
        server.flight()
        a, b = _cores(client_options, server_options, client, server)
        _one_handshake(a, b, client, server)
        wall += time.perf_counter() - start
        steps[0].append(client.steps)
        steps[1].append(server.steps)
        resumed_count += a.resumed
        accepted += bool(a.early_data_accepted)
        _close(a, b)
    wall -= client.slept + server.slept
    return {
        "kind": "0-rtt" if early_data else "resumed" if resumed else "full",
        "key_type": key_type,
        "handshakes": count,
        "idle_s": idle_s,
        "wall_s": wall,
        "handshakes_per_s": count / wall,
        "client_cpu_s_per_handshake": client.seconds / count,
        "server_cpu_s_per_handshake": server.seconds / count,
        "client_cpu_s_per_flight": benchflights.flight_medians(steps[0]),
        "server_cpu_s_per_flight": benchflights.flight_medians(steps[1]),
        "resumed_fraction": resumed_count / count,
        "early_data_accepted_fraction": accepted / count,
    }


def bulk_throughput(
    total_bytes: int = 32 * 2**20,
    *,
    write_size: int = 16384,
    ciphersuite: str = "TLS_AES_128_GCM_SHA256",
) -> dict[str, Any]:
    """Protect ``total_bytes`` at one end and open them at the other, in ``write_size`` writes.

    MB/s is 10**6 bytes of application data per wall second, encryption and decryption
    together (one core does both here). Also reports the record overhead on the wire.
    """
    if total_bytes < write_size or write_size < 1:
        raise ValueError("need total_bytes >= write_size >= 1")
    sender, receiver = _CpuClock(), _CpuClock()
    a, b = _cores(
        {"ciphersuites": (ciphersuite,)}, {"server_identity": ServerIdentity()}, sender, receiver
    )
    _one_handshake(a, b, sender, receiver)
    sender.seconds = receiver.seconds = 0.0
    chunk = bytes(write_size)
    writes = total_bytes // write_size
    wire = delivered = 0
    start = time.perf_counter()
    for _ in range(writes):
        sender.run(a.send_data, chunk)
        data = sender.run(a.data_to_send)
        wire += len(data)
        for event in receiver.run(b.receive_data, data, 0.0):
            delivered += len(getattr(event, "data", b""))
    wall = time.perf_counter() - start
    if delivered != writes * write_size:
        raise RuntimeError(f"delivered {delivered} of {writes * write_size} bytes")
    return {
        "ciphersuite": ciphersuite,
        "bytes": delivered,
        "write_size": write_size,
        "wall_s": wall,
        "mb_per_s": delivered / 1e6 / wall,
        "sender_cpu_s": sender.seconds,
        "receiver_cpu_s": receiver.seconds,
        "wire_overhead_fraction": (wire - delivered) / delivered,
    }


def run_all(count: int = 200, total_bytes: int = 32 * 2**20) -> dict[str, Any]:
    """Every benchmark once, with default sizes: a dict of the dicts above."""
    return {
        "full": handshakes(count),
        "full_ed25519": handshakes(count, key_type="ed25519"),
        "resumed": handshakes(count, resumed=True),
        "zero_rtt": handshakes(count, resumed=True, early_data=b"GET / HTTP/1.1\r\n\r\n"),
        "bulk": {s: bulk_throughput(total_bytes, ciphersuite=s) for s in CIPHERSUITES},
    }
