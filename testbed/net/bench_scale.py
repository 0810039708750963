"""How long a shaped ``fanin:clients=N`` network takes to start (and each build step of it) and
stop, and the memory of its delay lines (resident set of every delay-line process, read from
/proc while it runs)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import topologies
from testbed.net.network import NetConfig, Network
from topologies import PathShape

PYTHON_MAX_CLIENTS = 16  # the Python fallback above this: minutes and gigabytes, not measured


def rss_kb(pid: int) -> int:
    """VmRSS of a process; mnexec execs the helper, so the helper's pid is the Popen's."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def measure(backend: str, helper: str, clients: int, rtt_ms: float = 20.0) -> dict[str, Any]:
    row: dict[str, Any] = {"metric": "fanin-scale", "method": f"fanin:clients={clients}",
                           "configured_rtt_ms": rtt_ms, "clients": clients,
                           "delay_helper": helper, "backend": backend}
    if helper == "python" and clients > PYTHON_MAX_CLIENTS:
        row["skipped"] = (f"Python fallback above {PYTHON_MAX_CLIENTS} clients; ~16.6 MB and "
                          "~0.3 s of start-up per line")
        return row
    topo = topologies.create(f"fanin:clients={clients}", path=PathShape(rtt_ms=rtt_ms))
    net = Network(topo, NetConfig(link_backend=backend, delay_helper=helper))
    t0 = time.monotonic()
    net.start()
    try:
        row["start_s"] = time.monotonic() - t0
        # Where the start went (plan, hosts, links, configure, shaping: Network.timings).
        row.update({f"start_{step}_s": seconds for step, seconds in net.timings.items()})
        lines = [h for h in net.helpers if h.name.startswith("delayline:")]
        row["delay_lines"] = len(lines)
        row["delayline_rss_mb"] = sum(rss_kb(h.proc.pid) for h in lines) / 1024
    finally:
        t1 = time.monotonic()
        net.stop()
        row["stop_s"] = time.monotonic() - t1
    return row
