"""Run the request/response workload across a running network and collect records.

One call = one server process on the topology's server, a capture on the
client's interface, and one client process opening N connections; the result
is the client's per-connection JSON records, each tagged with the capture file.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.errors import ProcessDiedError
from testbed.net.capture import Capture
from testbed.net.network import Network

SERVER_PORT = 5000


@dataclass(frozen=True, kw_only=True)
class Workload:
    proto: str = "plain"
    connections: int = 1
    concurrency: int = 1
    request_size: int = 12
    response_size: int = 1024
    timeout_s: float = 10.0
    gap_ms: float = 0.0


def run_workload(
    net: Network,
    work: Workload,
    pcap: Path | None = None,
    client: str | None = None,
    port: int = SERVER_PORT,
) -> list[dict[str, Any]]:
    """Run ``work`` from ``client`` (default: the first client) to the server."""
    client = client or net.topology.clients[0]
    server = net.topology.server
    server_proc = net.start_helper(
        server, f"server:{work.proto}",
        [sys.executable, "-m", "testbed.apps.server", "--port", str(port),
         "--proto", work.proto, "--request-size", str(work.request_size)],
        ready="ready",
    )
    try:
        if pcap is not None:
            with Capture(net.nodes[client], net.intf(client), pcap):
                records = _run_client(net, work, client, server, port)
        else:
            records = _run_client(net, work, client, server, port)
    finally:
        net.stop_helper(server_proc)
    for record in records:
        record["pcap"] = str(pcap) if pcap else None
    return records


def _run_client(
    net: Network, work: Workload, client: str, server: str, port: int
) -> list[dict[str, Any]]:
    argv = [
        sys.executable, "-m", "testbed.apps.client", "--server", net.ip(server),
        "--port", str(port), "--proto", work.proto,
        "--connections", str(work.connections), "--concurrency", str(work.concurrency),
        "--request-size", str(work.request_size), "--response-size", str(work.response_size),
        "--timeout", str(work.timeout_s), "--gap-ms", str(work.gap_ms),
    ]
    proc = net.popen(client, argv)
    budget = work.connections * (work.timeout_s + 1) + 10
    out, err = proc.communicate(timeout=budget)
    net.check()
    if proc.returncode != 0:
        raise ProcessDiedError(f"client exited {proc.returncode}: {err.strip()[-500:]}")
    return [json.loads(line) for line in out.splitlines() if line.strip()]
