"""What the in-memory handshake benchmarks share (testbed/teps/tls/bench.py,
testbed/teps/tcpcrypt/bench.py): the idleness before a flight, and each flight's median CPU.

On a path an endpoint waits about one round trip between the flights of a handshake; a flight
measured after such a wait is the cold figure `tcpinc bench endpoints` sets beside the host
time (testbed/bench_endpoints.py).
"""

from __future__ import annotations

import statistics
import time


def idle(seconds: float) -> float:
    """Sleep ``seconds`` (callers keep it outside every timed window); returns the wall
    seconds slept, which the benchmarks leave out of their wall time. 0: no sleep at all."""
    if seconds <= 0:
        return 0.0
    start = time.perf_counter()
    time.sleep(seconds)
    return time.perf_counter() - start


def flight_medians(handshakes: list[list[float]]) -> list[float]:
    """Median CPU per flight, in order, over the handshakes with the most common number of
    flights (a handshake of another shape is left out)."""
    if not handshakes:
        return []
    lengths = [len(h) for h in handshakes]
    common = max(set(lengths), key=lengths.count)
    same = [h for h in handshakes if len(h) == common]
    return [statistics.median(h[i] for h in same) for i in range(common)]
