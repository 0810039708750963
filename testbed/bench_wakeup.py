"""`tcpinc bench wakeup`: what a process that sat idle costs when a packet wakes it.

Every endpoint of an emulated connection (the client and server applications, the ENO hooks)
blocks between the flights of a handshake, for about one RTT. If waking after a long idle
period costs more than waking after a short one (CPU idle states, frequency scaling, caches
and branch predictors cooled by other work, the hypervisor descheduling an idle vCPU), the
endpoints' processing time, and so the gap between measured and theoretical time to first
byte, grows with the RTT even though the emulated link is exact.

This benchmark isolates that effect from the network: a parent and a child process joined by
one loopback TCP connection (TCP_NODELAY) play ping-pong with one byte, and before each ping
the parent sleeps ``gap`` ms, so both sides were idle for that long. Gaps are interleaved in
a seeded random order within every round, so a load change on the machine hits each gap
alike. Printed per gap: median, p10 and p90 of the round trip in microseconds and the ratio
of the median to the median at gap 0.
"""

from __future__ import annotations

import json
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

GAPS_MS = (0.0, 1.0, 5.0, 20.0, 50.0, 100.0, 200.0)
ECHO = r"""
import socket, sys
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    data = sock.recv(1)
    if not data:
        break
    sock.sendall(data)
"""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(gaps_ms: tuple[float, ...] = GAPS_MS, rounds: int = 100, seed: int = 1,
            warmup: int = 10) -> dict[str, Any]:
    """Round trips (us) per idle gap; see the module docstring."""
    if rounds < 1 or not gaps_ms or any(g < 0 for g in gaps_ms):
        raise ValueError("need rounds >= 1 and non-negative gaps")
    rng = random.Random(seed)
    samples: dict[float, list[float]] = {g: [] for g in gaps_ms}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        child = subprocess.Popen([sys.executable, "-c", ECHO, str(port)])
        try:
            listener.settimeout(10)
            conn, _ = listener.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.settimeout(10)
                for _ in range(warmup):
                    _ping(conn)
                for _ in range(rounds):
                    order = list(gaps_ms)
                    rng.shuffle(order)
                    for gap in order:
                        time.sleep(gap / 1e3)
                        samples[gap].append(_ping(conn))
        finally:
            child.terminate()
            child.wait(timeout=5)
    base = statistics.median(samples[min(gaps_ms)])
    rows = [{"gap_ms": g, "n": len(v), "median_us": round(statistics.median(v), 1),
             "p10_us": round(_percentile(v, 0.1), 1), "p90_us": round(_percentile(v, 0.9), 1),
             "ratio_to_smallest_gap": round(statistics.median(v) / base, 2)}
            for g, v in sorted(samples.items())]
    return {"rounds": rounds, "seed": seed, "rows": rows}


def _ping(conn: socket.socket) -> float:
    start = time.perf_counter()
    conn.sendall(b"x")
    if conn.recv(1) != b"x":
        raise ConnectionError("echo child answered wrongly or closed")
    return (time.perf_counter() - start) * 1e6


def main(args: Any) -> None:
    rounds = 20 if getattr(args, "quick", False) else 100
    result = measure(rounds=rounds)
    print(f"{'gap ms':>7} {'median us':>10} {'p10 us':>8} {'p90 us':>8} {'x gap 0':>8}")
    for row in result["rows"]:
        print(f"{row['gap_ms']:>7g} {row['median_us']:>10.1f} {row['p10_us']:>8.1f} "
              f"{row['p90_us']:>8.1f} {row['ratio_to_smallest_gap']:>8.2f}")
    out = Path(getattr(args, "out", "results/bench"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "wakeup.json").write_text(json.dumps(result, indent=1) + "\n")
