"""`tcpinc bench replay`: does a replayed SYN deliver its data to the server application twice?

RFC 7413 §6.1: data on a SYN may reach the server application more than once when a copy of
the SYN arrives after the server has cleared the original connection's state. The
``replay-syn`` middlebox (middleboxes/synboxes.py) makes that copy deliberately: it forwards
each client SYN that carries data and sends an exact copy ``delay_ms`` later. For each arm
that puts data on the SYN, ``connections`` sequential connections run through the box
(``gap_ms`` apart, so every copy lands while the server still runs), and the server's
per-connection records (testbed/apps/server.py, ``event: request`` with the request id the
client chose) show how often each request reached the application. A request id seen twice
is replayed application data that was delivered.

Expected from the designs: plain TCP Fast Open has no defence (its cookie authenticates the
client's address, not the segment); TLS 1.3 0-RTT early data is refused on a second use of
its ticket by OpenSSL's anti-replay (single-use tickets, RFC 8446 §8.1), and accepted again
with that anti-replay switched off (``tls-0rtt-syn-noantireplay``, SSL_OP_NO_ANTI_REPLAY); a
resumed tcpcrypt request on the SYN (``tcpcrypt-resume-syn``) is refused by the single-use
resumption answers (RFC 8548 §3.5: the copy names an identifier already used, so the server
answers with a fresh exchange and the copy's frames never decrypt); a TLS ClientHello or a
tcpcrypt Init1 alone on the SYN carries no application data to replay.
The ENO arms (testbed/apps/proto_syn.py) run with both hosts' ENO hooks and the no-cookie TFO
modes they need, as the workload sets them.
"""

from __future__ import annotations

import collections
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ARMS = ("plain-tfo", "tls-noeno-tfo", "tls-noeno-0rtt-tfo", "tcpcrypt-syn", "tls-syn",
        "tls-0rtt-syn", "tls-0rtt-syn-noantireplay", "tcpcrypt-resume-syn")
# Arms whose design claims that replayed SYN data never reaches the application
# (tcpcrypt-resume-syn: through its single-use resumption identifiers, RFC 8548 §3.5).
CLAIMS_PROTECTION = {"plain-tfo": False, "tls-noeno-tfo": True, "tls-noeno-0rtt-tfo": True,
                     "tcpcrypt-syn": True, "tls-syn": True, "tls-0rtt-syn": True,
                     "tls-0rtt-syn-noantireplay": False, "tcpcrypt-resume-syn": True}


def replayed_requests(server_lines: list[dict[str, Any]]) -> dict[str, int]:
    """From the server's records: requests delivered, distinct ids, and the surplus (replays)."""
    seen = collections.Counter(line["request_id"] for line in server_lines
                               if line.get("event") == "request")
    setups = sum(1 for line in server_lines if line.get("event") == "setup")
    return {"requests_delivered": sum(seen.values()), "distinct_requests": len(seen),
            "replayed_delivered": sum(n - 1 for n in seen.values()), "server_connections": setups}


def measure(proto: str, connections: int = 6, delay_ms: int = 150, gap_ms: int = 250,
            ) -> dict[str, Any]:
    """Run ``connections`` of ``proto`` through ``replay-syn`` on the middlebox topology."""
    import middleboxes
    import topologies
    from testbed.net.network import Network

    with Network(topologies.create("middlebox")) as net, _eno_hosts(net, proto):
        box = middleboxes.create(f"replay-syn:delay_ms={delay_ms}")
        box.install(net, "mb")
        try:
            records = net.workdir / f"replay-{proto}.jsonl"
            server = net.start_helper("server", f"server:{proto}", [
                sys.executable, "-m", "testbed.apps.server", "--port", "5000",
                "--proto", proto, "--records", str(records)], ready="ready")
            client = net.popen("client", [
                sys.executable, "-m", "testbed.apps.client", "--server", net.ip("server"),
                "--port", "5000", "--proto", proto, "--connections", str(connections),
                "--gap-ms", str(gap_ms), "--timeout", "5"])
            out, err = client.communicate(timeout=connections * 6 + 30)
            if client.returncode != 0:
                raise RuntimeError(f"client exited {client.returncode}: {err.strip()[-300:]}")
            time.sleep(delay_ms / 1000 + 0.5)  # the last copy lands and is served
            counters = box.counters()
            net.stop_helper(server)
        finally:
            box.remove()
        lines = [json.loads(x) for x in records.read_text().splitlines()] \
            if records.exists() else []
    client_records = [json.loads(x) for x in out.splitlines() if x.strip()]
    return {"proto": proto, "connections": connections, "delay_ms": delay_ms,
            "client_ok": sum(1 for r in client_records if r.get("bytes_ok")),
            "syns_through_box": counters["seen"], "claims_protection": CLAIMS_PROTECTION.get(proto),
            **replayed_requests(lines)}


@contextlib.contextmanager
def _eno_hosts(net: Any, proto: str) -> Iterator[None]:
    """ENO arms: both hosts' NFQUEUE hooks and the arm's per-host sysctls for the block."""
    from testbed.apps.transport import get_transport
    from testbed.eno.rules import HookSpec, finish_hook, launch_hook, stop_hook
    from testbed.workload import set_host_sysctls

    transport = get_transport(proto)
    if not transport.uses_eno:
        yield
        return
    set_host_sysctls(net, {"client": "client", "server": "server"},
                     getattr(transport, "host_sysctls", None))
    spec, started = HookSpec(), []
    try:
        for node in ("client", "server"):
            proc = launch_hook(net, node, spec)
            started.append((node, proc))
            finish_hook(net, node, proc, spec)
        yield
    finally:
        for node, proc in started:
            stop_hook(net, node, proc)


def main(args: Any) -> None:
    quick = getattr(args, "quick", False)
    rows = [measure(proto, connections=4 if quick else 11) for proto in ARMS]
    print(f"{'arm':<26} {'conns':>5} {'ok':>3} {'server conns':>12} {'requests':>8} "
          f"{'replayed delivered':>18} {'claims protection':>17}")
    for r in rows:
        print(f"{r['proto']:<26} {r['connections']:>5} {r['client_ok']:>3} "
              f"{r['server_connections']:>12} {r['requests_delivered']:>8} "
              f"{r['replayed_delivered']:>18} {r['claims_protection']!s:>17}")
    out = Path(getattr(args, "out", "results/bench"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "replay.json").write_text(json.dumps(rows, indent=1) + "\n")
