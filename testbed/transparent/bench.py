"""`tcpinc bench transparent`: what the transparent proxies add to a new connection.

One ``direct`` network per arm and RTT, with that arm's proxies on both hosts (``proxy-plain``:
ENO off, the proxies' own cost, which is what the 0.2 ms target is about; without ``--quick`` also
``tcpcrypt`` and ``tls``, whose figure adds their ENO and TEP handshakes). A client process in
the client host interleaves, round by round in alternating order, two connections to the same
echo server, so a load change on the machine hits both alike:

* ``direct``: a socket created under the proxy's group id, which the diversion leaves alone,
  to a server port that is not diverted in either: plain TCP end to end;
* ``proxied``: an ordinary socket to a diverted port: client proxy, network, server proxy,
  application.

Each connection measures ``connect()`` (the application's own call; for ``proxied`` that is
the hop to its local proxy) and the time from the start of ``connect()`` to the echo of one
byte: when the connection is usable end to end, the figure an application feels. The report
gives medians and p90 per path, ``added_ms`` (median proxied minus median direct) and the
median of the per-round differences. Figures measured while other work shares the machine
are that machine's, not the proxy's alone.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import topologies
from testbed.net.network import Network
from testbed.transparent.host import ProxySpec, transparent

PROXIED_PORT, DIRECT_PORT = 7300, 7301
ARMS = {"proxy-plain": ("plain", "off"), "tcpcrypt": ("tcpcrypt", "opportunistic"),
        "tls": ("tls", "opportunistic")}

ECHO_SERVER = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
for port in map(int, sys.argv[1:]):
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port)); ls.listen(256); ls.setblocking(False)
    sel.register(ls, selectors.EVENT_READ, None)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        if key.data is None:
            conn, _ = key.fileobj.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sel.register(conn, selectors.EVENT_READ, "conn")
            continue
        try:
            data = key.fileobj.recv(64)
        except OSError:
            data = b""
        if data:
            key.fileobj.sendall(data)
        else:
            sel.unregister(key.fileobj); key.fileobj.close()
"""

CLIENT = r"""
import json, os, socket, sys, time
server, gid, rounds, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ports = {"proxied": int(sys.argv[5]), "direct": int(sys.argv[6])}

def new_socket(path):
    if path == "direct":  # the diversion leaves sockets of the proxy's group alone
        os.setegid(gid)
    try:
        return socket.socket()
    finally:
        os.setegid(0)

def once(path):
    s = new_socket(path)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(10)
    t0 = time.perf_counter()
    s.connect((server, ports[path]))
    t1 = time.perf_counter()
    s.sendall(b"x")
    if s.recv(1) != b"x":
        raise SystemExit(f"{path}: no echo")
    t2 = time.perf_counter()
    s.close()
    return {"path": path, "connect_ms": (t1 - t0) * 1e3, "first_byte_ms": (t2 - t0) * 1e3}

rows = []
for i in range(warmup + rounds):
    order = ("direct", "proxied") if i % 2 else ("proxied", "direct")
    for path in order:
        row = once(path)
        if i >= warmup:
            rows.append({"round": i - warmup, **row})
print(json.dumps(rows))
"""


def measure(arm: str, rtt_ms: float, rounds: int, warmup: int) -> dict[str, Any]:
    proto, policy = ARMS[arm]
    spec = ProxySpec(proto=proto, policy=policy)
    specs = {"client": spec,
             "server": ProxySpec(proto=proto, policy=policy, listen_ports=(PROXIED_PORT,))}
    path = topologies.PathShape(rtt_ms=rtt_ms)
    with Network(topologies.create("direct", path=path)) as net:
        server = net.start_helper("server", "echo", [
            sys.executable, "-c", ECHO_SERVER, str(PROXIED_PORT), str(DIRECT_PORT)],
            ready="ready", essential=False)
        try:
            with transparent(net, specs) as hosts:
                out = net.run("client", [
                    sys.executable, "-c", CLIENT, net.ip("server"), str(spec.gid), str(rounds),
                    str(warmup), str(PROXIED_PORT), str(DIRECT_PORT)],
                    timeout=60 + rounds * (4 * rtt_ms / 1e3 + 0.5))
                for host in hosts.values():
                    host.wait_idle()
                records = hosts["client"].records()
        finally:
            net.stop_helper(server)
    rows: list[dict[str, Any]] = json.loads(out.strip().splitlines()[-1])
    return summarise(arm, rtt_ms, rows, records)


def summarise(arm: str, rtt_ms: float, rows: list[dict[str, Any]],
              records: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {"arm": arm, "rtt_ms": rtt_ms,
                              "rounds": len(rows) // 2}
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_round.setdefault(row["round"], {})[row["path"]] = row
    for metric in ("connect_ms", "first_byte_ms"):
        for path in ("direct", "proxied"):
            values = sorted(r[metric] for r in rows if r["path"] == path)
            result[f"{path}_{metric}_median"] = statistics.median(values)
            result[f"{path}_{metric}_p90"] = values[int(0.9 * (len(values) - 1))]
        result[f"added_{metric}"] = (result[f"proxied_{metric}_median"]
                                     - result[f"direct_{metric}_median"])
        result[f"paired_added_{metric}_median"] = statistics.median(
            r["proxied"][metric] - r["direct"][metric] for r in by_round.values())
    result["outcomes"] = sorted({str(r.get("outcome")) for r in records})
    result["proxy_sched"] = sorted({str(r.get("sched")) for r in records})
    result["added_ms"] = result["added_first_byte_ms"]
    result["target_ms"] = 0.2 if arm == "proxy-plain" else None
    return result


def main(args: Any) -> None:
    quick = getattr(args, "quick", False)
    rounds, warmup = (40, 5) if quick else (200, 20)
    arms = ["proxy-plain"] if quick else list(ARMS)
    rtts = [0.0] if quick else [0.0, 20.0]
    results = [measure(arm, rtt, rounds, warmup) for rtt in rtts for arm in arms]
    text = json.dumps(results, indent=1)
    print(text)
    out = Path(getattr(args, "out", "results/bench"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "transparent.json").write_text(text + "\n")
