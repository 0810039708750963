"""Helpers for the ENO emulation tests: hooks as a context manager, strip rules, host scripts."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from middleboxes.helper import read_stats
from testbed.eno.bench import hook_stats
from testbed.eno.rules import HookSpec, start_hook, stop_hook
from testbed.net.network import Network

# TCPOPTSTRIP of kind 69 on the middle host, selecting one handshake segment each (RFC 8547
# §8.1: a path may strip ENO in one direction, or from some segments only).
STRIP_MATCH = {
    "syn": ["--tcp-flags", "SYN,ACK", "SYN"],
    "synack": ["--tcp-flags", "SYN,ACK", "SYN,ACK"],
    # A's third segment: the 2nd packet of the original direction (conntrack counts it).
    "ack": ["--tcp-flags", "SYN,ACK", "ACK", "-m", "connbytes", "--connbytes", "2:2",
            "--connbytes-dir", "original", "--connbytes-mode", "packets"],
}


def strip_rule(which: str) -> list[str]:
    return ["iptables", "-w", "-t", "mangle", "-A", "FORWARD", "-p", "tcp", *STRIP_MATCH[which],
            "-j", "TCPOPTSTRIP", "--strip-options", "69"]


@contextmanager
def eno_hooks(net: Network, nodes: tuple[str, ...] = ("client", "server"),
              spec: HookSpec | None = None) -> Iterator[None]:
    """The hook on each node for the block; a hook that died makes the test fail."""
    started = []
    try:
        for node in nodes:
            started.append((node, start_hook(net, node, spec or HookSpec())))
        yield
    finally:
        for node, proc in started:
            stop_hook(net, node, proc)


@contextmanager
def cross_syns(net: Network, port: int, queue: int = 9) -> Iterator[dict[str, Any]]:
    """The middle host holds each SYN to ``port`` until the other end's SYN comes, then lets
    both go: a simultaneous open by construction (middleboxes/pktmodel.py, CrossSyns).
    Yields a dict that holds the model's final stats once the block has left."""
    path = net.workdir / "cross-syns.json"
    proc = net.start_helper("mb", "cross-syns", [
        sys.executable, "-m", "middleboxes.nfq", "--model", "cross-syns",
        "--params", json.dumps({"port": port}), "--queue", str(queue), "--stats", str(path)],
        ready="ready")
    rule = ["FORWARD", "-p", "tcp", "--dport", str(port), "--tcp-flags", "SYN,ACK", "SYN",
            "-j", "NFQUEUE", "--queue-num", str(queue)]
    final: dict[str, Any] = {}
    try:
        net.run("mb", ["iptables", "-w", "-A", *rule])
        try:
            yield final
        finally:
            net.run("mb", ["iptables", "-w", "-D", *rule])
    finally:
        net.stop_helper(proc)
        final.update(read_stats(path) or {})


def stats(net: Network, node: str) -> dict[str, Any]:
    return hook_stats(net, node)


def run_script(net: Network, node: str, script: str, *args: str, timeout: float = 30) -> Any:
    """Run a Python snippet in ``node``; its last stdout line is JSON."""
    proc = net.popen(node, [sys.executable, "-c", script, *args])
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"script in {node} timed out: {err[-2000:]}") from None
    assert proc.returncode == 0, f"script in {node} failed: {err[-2000:]}"
    return json.loads(out.strip().splitlines()[-1])


STREAM_CLIENT = r'''
import json, sys
from testbed.stream import StreamConfig, StreamError, connect
from testbed.teps import tcpcrypt
tcpcrypt.register_all()
server, teps, b = sys.argv[1], tuple(sys.argv[2].split(",")), sys.argv[3] == "1"
try:
    s = connect((server, 5000), StreamConfig(teps=teps, passive_role=b), timeout=5)
except StreamError as exc:
    print(json.dumps({"error": repr(exc)}))
    sys.exit(0)
info = s.info
print(json.dumps({"eno": info.eno, "reason": info.fallback_reason, "tep": info.tep}))
s.close()
'''

SIMULTANEOUS = r'''
import json, sys
from testbed.stream import StreamConfig, connect
peer, b = sys.argv[1], sys.argv[2] == "1"
config = StreamConfig(teps=("eno-test",), passive_role=b)
print("armed", flush=True)
sys.stdin.readline()
s = connect((peer, 6000), config, timeout=10, local_address=("0.0.0.0", 6000))
s.sendall(b"hello from " + sys.argv[3].encode())
got = s.recv(100)
i = s.info
print(json.dumps({"eno": i.eno, "reason": i.fallback_reason, "role": i.role, "tep": i.tep,
                  "sid": i.session_id.hex() if i.session_id else None, "got": got.decode(),
                  "transcript": i.transcript.hex()}))
s.close()
'''

# A crafted peer: raw SYNs (kernel-like options plus the case's bytes) to the server's ENO
# listener; reports each SYN-ACK's options. Runs in the client host (the kernel there answers
# the SYN-ACKs with RSTs, which is fine: only the server's reaction matters).
RAW_PEER = r'''
import json, socket, sys, time
from tests.eno_segments import segment
from testbed.packet import PacketError, parse_segment
server, me, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
rx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
rx.settimeout(0.5)

def answer(sport):
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            seg = parse_segment(rx.recv(4096))
        except (socket.timeout, PacketError):
            continue
        if seg.sport == 5000 and seg.dport == sport:
            return seg
    return None

out = {}
for i, (name, case) in enumerate(cases.items()):
    sport = 21000 + i
    syn = segment((me, sport), (server, 5000), "S", 1000, options=bytes.fromhex(case["syn"]),
                  payload=bytes.fromhex(case.get("data", "")))
    tx.sendto(syn, (server, 0))
    seg = answer(sport)
    if seg is not None and "third" in case:  # complete the handshake, then reset it
        ack = segment((me, sport), (server, 5000), "A", 1001, seg.seq + 1,
                      options=bytes.fromhex(case["third"]))
        tx.sendto(ack, (server, 0))
        time.sleep(0.05)
        tx.sendto(segment((me, sport), (server, 5000), "R", 1001, options=b""), (server, 0))
    out[name] = None if seg is None else {"port": sport, "options": seg.options.hex(),
                                          "ack": seg.ack, "flags": seg.flags}
print(json.dumps(out))
'''

RESULTS = r'''
import json, sys
from testbed.eno.control import HookClient
server, client, ports = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
hook = HookClient()
out = {}
for port in ports:
    r = hook.result((server, 5000), (client, port))
    out[port] = None if r is None else {"outcome": r.outcome, "reason": r.reason,
                                        "state": r.state}
print(json.dumps(out))
'''
