"""The delay line in real namespaces: client -- [shaper] -- server, real kernel TCP and ICMP.

Tests assert what is exact: no packet leaves before its due time, nothing is dropped on an
unshaped path, bytes arrive intact, and the delay the line reports it applied. Accuracy figures
(median error, lateness) belong to `tcpinc bench emulator`, which prints them.
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from tests.emulation.conftest import NAMED

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# --- emulation: real namespaces --------------------------------------------------------------

needs_root_ip = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2")

CLIENT_IP, SERVER_IP = "10.9.0.1", "10.9.0.2"

# Runs in the client namespace. Like ping: wall clock before sendto, kernel receive timestamp
# (SO_TIMESTAMPNS) of the reply, so the prober's own wake-up latency is not counted.
_ICMP_PROBE = r"""
import json, os, socket, struct, sys, time
dst, count, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS
s.settimeout(3.0)
ident = os.getpid() & 0xFFFF
def checksum(b):
    total = sum(struct.unpack(f"!{len(b) // 2}H", b))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
rtts, lost = [], 0
for seq in range(count):
    body = struct.pack("!HH", ident, seq) + bytes(56)
    packet = struct.pack("!BBH", 8, 0, checksum(b"\x08\x00\x00\x00" + body)) + body
    sent = time.time()
    s.sendto(packet, (dst, 0))
    try:
        while True:
            data, anc, _f, _a = s.recvmsg(2048, 64)
            ihl = (data[0] & 0x0F) * 4
            kind, _c, _k, rid, rseq = struct.unpack_from("!BBHHH", data, ihl)
            if kind == 0 and rid == ident and rseq == seq:
                sec, nsec = struct.unpack("@qq", anc[0][2])
                rtts.append((sec + nsec * 1e-9 - sent) * 1e3)
                break
    except TimeoutError:
        lost += 1
    time.sleep(gap)
print(json.dumps({"rtt_ms": rtts, "lost": lost}))
"""

_TCP_SERVER = r"""
import hashlib, socket, sys
listener = socket.create_server((sys.argv[1], int(sys.argv[2])))
listener.settimeout(30)
print("listening", flush=True)
conn, _ = listener.accept()
conn.settimeout(30)
digest, total = hashlib.sha256(), 0
while chunk := conn.recv(1 << 16):
    digest.update(chunk)
    total += len(chunk)
conn.sendall(f"{total} {digest.hexdigest()}".encode())
conn.close()
"""

_TCP_CLIENT = r"""
import hashlib, json, random, socket, sys, time
payload = random.Random(5).randbytes(int(sys.argv[3]))
start = time.monotonic()
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
conn.sendall(payload)
conn.shutdown(socket.SHUT_WR)
reply = conn.recv(1024).decode()
seconds = time.monotonic() - start
expected = f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"
print(json.dumps({"ok": reply == expected, "reply": reply, "seconds": seconds}))
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


def _in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


@dataclass(frozen=True)
class Chain:
    client: str
    shaper: str
    server: str


@contextmanager
def _l2_chain() -> Iterator[Chain]:
    """client 10.9.0.1 -- [shaper: if0, if1, no IP] -- server 10.9.0.2; always torn down."""
    suffix = secrets.token_hex(4)
    chain = Chain(f"dlc-{suffix}", f"dlm-{suffix}", f"dls-{suffix}")
    names = (chain.client, chain.shaper, chain.server)
    created: list[str] = []
    try:
        for ns in names:
            _ip("netns", "add", ns)
            created.append(ns)
            NAMED.add(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            for key in ("all", "default"):  # no RS/MLD/DAD frames on the wire or in the line
                subprocess.run(_in_ns(ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1"),
                               check=True, capture_output=True, timeout=10)
        _ip("link", "add", "eth0", "netns", chain.client, "type", "veth",
            "peer", "name", "if0", "netns", chain.shaper)
        _ip("link", "add", "eth0", "netns", chain.server, "type", "veth",
            "peer", "name", "if1", "netns", chain.shaper)
        for ns, addr in ((chain.client, CLIENT_IP), (chain.server, SERVER_IP)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        for intf in ("if0", "if1"):
            _ip("-n", chain.shaper, "link", "set", intf, "promisc", "on", "up")
        yield chain
    finally:
        failed = []
        for ns in created:
            done = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True,
                                  timeout=10, check=False)
            if done.returncode != 0:
                failed.append(f"{ns}: {done.stderr.strip()}")
        if failed:
            raise RuntimeError(f"namespace cleanup failed: {failed}")


def _wait_line(proc: subprocess.Popen[str], expected: str, timeout: float) -> None:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise AssertionError(f"no {expected!r} line within {timeout}s")
        line = proc.stdout.readline().strip()
    if line != expected:
        err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
        raise AssertionError(f"expected {expected!r}, got {line!r} (rc={proc.poll()}) {err}")


@contextmanager
def _running(argv: list[str], ready: str) -> Iterator[subprocess.Popen[str]]:
    """Start a helper, wait for its ready line, and always stop it by its own pid."""
    proc = subprocess.Popen(argv, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_line(proc, ready, timeout=15)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _delay_line(chain: Chain, stats: Path, a2b: dict[str, Any], b2a: dict[str, Any]) -> list[str]:
    return _in_ns(chain.shaper, sys.executable, "-m", "testbed.net.delayline",
                  "--if-a", "if0", "--if-b", "if1", "--a2b", json.dumps(a2b),
                  "--b2a", json.dumps(b2a), "--seed", "1", "--stats", str(stats))


def _probe(chain: Chain, count: int) -> dict[str, Any]:
    done = subprocess.run(_in_ns(chain.client, sys.executable, "-c", _ICMP_PROBE, SERVER_IP,
                                 str(count), "0.005"),
                          capture_output=True, text=True, timeout=60, check=True)
    return cast(dict[str, Any], json.loads(done.stdout))


def _probe_rtts(chain: Chain, count: int) -> list[float]:
    _probe(chain, 1)  # warm-up: its ARP exchange also crosses the delay line (one extra RTT)
    result = _probe(chain, count)
    assert result["lost"] == 0
    return sorted(result["rtt_ms"])


def _tcp_transfer(chain: Chain, nbytes: int) -> dict[str, Any]:
    server = _in_ns(chain.server, sys.executable, "-c", _TCP_SERVER, SERVER_IP, "5001")
    with _running(server, "listening"):
        done = subprocess.run(_in_ns(chain.client, sys.executable, "-c", _TCP_CLIENT, SERVER_IP,
                                     "5001", str(nbytes)),
                              capture_output=True, text=True, timeout=60, check=True)
    return cast(dict[str, Any], json.loads(done.stdout))


def _stop_and_read_stats(proc: subprocess.Popen[str], stats: Path) -> dict[str, Any]:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    return cast(dict[str, Any], json.loads(stats.read_text()))


@needs_root_ip
def test_delay_line_rtt_and_tcp_in_namespaces(tmp_path: Path) -> None:
    delay_ms = 10.0
    one_way = {"delay_ms": delay_ms, "jitter_ms": 0.0, "loss": 0.0, "rate_bps": None,
               "queue_packets": None, "queue_bytes": None}
    configured_rtt = 2 * delay_ms
    stats = tmp_path / "delayline.json"
    with _l2_chain() as chain, _running(_delay_line(chain, stats, one_way, one_way),
                                        "ready") as line:
        rtts = _probe_rtts(chain, count=100)
        transfer = _tcp_transfer(chain, 4 << 20)
        line.send_signal(signal.SIGUSR1)  # stats while running, without stopping
        deadline = time.monotonic() + 5
        while not stats.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert json.loads(stats.read_text())["final"] is False and line.poll() is None
        report = _stop_and_read_stats(line, stats)

    # Exact: no echo came back before the configured RTT, and the line says every frame it
    # forwarded waited at least its configured delay. How close the median gets is an accuracy
    # figure that load can move: `tcpinc bench emulator` prints it.
    assert len(rtts) == 100 and rtts[0] >= configured_rtt, f"RTT below {configured_rtt} ms"
    assert transfer["ok"], transfer
    assert report["final"] is True and report["error"] is None
    for name, d in report["directions"].items():
        assert d["frames"] > 100, name
        assert d["dropped_tx"] == d["dropped_queue"] == d["dropped_loss"] == 0, name
        assert d["delay_ms"]["min"] >= delay_ms, name
    # The bulk direction carried GSO super-frames through the vnet header unchanged.
    assert report["directions"]["a2b"]["gso_frames"] > 0


@needs_root_ip
def test_delay_line_rate_limit_in_namespaces(tmp_path: Path) -> None:
    rate = 20_000_000
    a2b = {"delay_ms": 2.0, "rate_bps": rate, "queue_packets": 200}
    b2a = {"delay_ms": 2.0}
    stats = tmp_path / "delayline.json"
    with _l2_chain() as chain, _running(_delay_line(chain, stats, a2b, b2a), "ready") as line:
        _tcp_transfer(chain, 1 << 20)  # warm-up: slow start and ARP out of the way
        transfer = _tcp_transfer(chain, 6 << 20)
        report = _stop_and_read_stats(line, stats)
    assert transfer["ok"], transfer
    goodput = (6 << 20) * 8 / transfer["seconds"]
    # TCP payload share of a 1514-byte frame with timestamps is 1448/1514. One-sided: a load
    # spike can only slow the transfer, never push it past the limiter (the client's clock
    # spans the whole transfer, 6 MiB against a 200-frame queue).
    ceiling = rate * 1448 / 1514
    assert goodput <= 1.02 * ceiling, f"goodput {goodput / 1e6:.2f} Mbit/s above the limit"
    a = report["directions"]["a2b"]
    assert a["gso_frames"] > 0 and a["wire_bytes_in"] > a["bytes_in"]
    # Applied delay = propagation + serialization + queueing: never below the propagation delay.
    assert a["delay_ms"]["min"] >= 2.0 and a["delay_ms"]["median"] > 2.0
    assert a["dropped_tx"] == 0
