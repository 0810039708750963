"""The compiled delay line in real namespaces: what each link reports it applied, the helper it
ran recorded, and a link it cannot honour refused before anything is built."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import topologies
from testbed.errors import ConfigError
from testbed.net import delayhelper
from testbed.net.delayhelper import BINARY
from testbed.net.network import NetConfig, Network
from testbed.net.state import STATE_DIR
from topologies import PathShape

# ping -c N alone stops waiting two of its largest RTTs after its last probe (iputils
# ping(8), -W), so one reply a loaded delay line released 30 ms late counted as lost ("19
# received, 5% packet loss" in a CI run, no frame dropped). With a deadline it waits for all N
# replies, up to the deadline. While it waits it keeps probing at its interval and stops at the
# N-th reply, so on a slow line the probes still unanswered then count as "loss" in its summary
# ("24 transmitted, 20 received, 16.6667% packet loss" in a run beside a second test suite,
# every line counter clean), and a lost probe is made up for by a later one. So ping's figure
# says nothing exact about loss: the tests take its number of replies (``replies``), and the
# lines' own counters say whether a frame was dropped.
PING_DEADLINE = ["-w", "20"]
PING_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")


def replies(out: str) -> int:
    """How many echo replies ping's summary line counts."""
    found = PING_SUMMARY.search(out)
    assert found, out
    return int(found.group(2))


def _ping(net: Network, count: int) -> str:
    return net.run("client", ["ping", "-n", "-c", str(count), "-i", "0.01", *PING_DEADLINE,
                              net.ip("server")], timeout=60)


@pytest.mark.parametrize("helper", ["c", "python"])
def test_link_reports_the_delay_it_applied(helper: str) -> None:
    topo = topologies.create("direct", path=PathShape(rtt_ms=10))
    with Network(topo, NetConfig(link_backend="userspace", delay_helper=helper)) as net:
        out = _ping(net, 20)
        assert net.describe()["delay_helper"] == helper
    report = net.link_reports["client-server"]
    counters = {name: {k: v for k, v in d.items() if k.startswith(("frames", "dropped", "rx_",
                                                                   "tx_", "in_flight"))}
                for name, d in report["directions"].items()}
    assert replies(out) == 20, (out, counters)
    assert report["final"] is True and report["error"] is None
    assert report.get("helper", "python") == helper
    for name in ("a2b", "b2a"):
        d = report["directions"][name]
        assert d["shape"]["delay_ms"] == 5.0
        assert d["frames"] >= 20 and d["frames"] == d["frames_in"]
        assert d["dropped_loss"] == d["dropped_queue"] == d["dropped_tx"] == 0
        assert d["delay_ms"]["count"] == d["frames"]
        assert d["lateness_us"]["count"] == d["frames"] and d["lateness_us"]["min"] >= 0
        if helper == "python":
            assert d["delay_ms"]["min"] >= 5.0, "a frame left before its due time"
            continue
        # echoes one at a time: one-frame send calls, timed
        assert 0 < d["send_call_us"]["count"] <= d["frames"]
        assert d["send_call_us"]["min"] > 0
        _check_device_stamps(d, 5.0)


def _check_device_stamps(d: dict[str, Any], delay_ms: float) -> None:
    """What a direction of the compiled line says about its frames at the device
    (testbed/net/delayline_c/txstamp.c): ping's 10 ms gaps are idleness, so frames were stamped;
    a frame whose recorded delay is below the configured one is counted as early, by no more
    than the largest early margin, which is never more than a measured send path."""
    s = d["device_stamps"]
    assert s["state"] == "on" and s["error"] is None
    assert s["asked"] == s["stamped"] + s["missing"] and s["stamped"] > 0
    assert s["device_lateness_us"]["count"] == s["stamped"]
    assert s["to_device_us"]["count"] >= 1 and s["to_device_us"]["min"] >= 0
    shortfall_us = (delay_ms - d["delay_ms"]["min"]) * 1e3  # delay_ms has 0.1 us digits
    if shortfall_us > 0.1:
        assert s["early"] >= 1 and shortfall_us <= s["early_max_us"] + 0.1
    if s["send_lead"] == "off" or s["early"] == 0:
        assert s["early_max_us"] == 0 and d["delay_ms"]["min"] >= delay_ms
        assert s["device_lateness_us"]["min"] >= 0
    assert s["early_max_us"] <= s["to_device_us"]["max"]
    for lead in s["lead_us"]:
        assert lead is None or 0 <= lead <= s["to_device_us"]["max"]
    if s["send_lead"] == "off":
        assert s["lead_us"] == [None] * 4


def test_send_lead_off_starts_every_send_at_its_due_time() -> None:
    """The compiled line with its send lead off still stamps frames at the device, and none is
    early: the recorded delay of every frame is at least the configured one."""
    topo = topologies.create("direct", path=PathShape(rtt_ms=10))
    config = NetConfig(link_backend="userspace", delay_helper="c", send_lead="off")
    with Network(topo, config) as net:
        _ping(net, 20)
        assert net.describe()["send_lead"] == "off"
    applied = net.applied_delay()["client-server"]
    for name in ("a2b", "b2a"):
        d = net.link_reports["client-server"]["directions"][name]
        assert d["device_stamps"]["send_lead"] == "off"
        _check_device_stamps(d, 5.0)
        s = d["device_stamps"]
        assert applied[name]["send_lead"] == "off" and applied[name]["early_frames"] == 0
        assert applied[name]["device_stamped"] == s["stamped"]
        assert applied[name]["device_lateness_p99_us"] == s["device_lateness_us"]["p99"]


def _worker_cpus(pid: int) -> dict[str, str]:
    """The CPUs each of a line's named worker threads may run on (/proc/PID/task)."""
    cpus = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        name = (task / "comm").read_text().strip()
        status = (task / "status").read_text().splitlines()
        if name.startswith("dl-"):
            cpus[name] = next(line.split()[1] for line in status
                              if line.startswith("Cpus_allowed_list:"))
    return cpus


@pytest.mark.parametrize("name, params, links", [
    ("direct", {}, 1), ("middlebox", {}, 2),
    ("fanin", {"clients": delayhelper.RX_RING_MAX_LINES}, delayhelper.RX_RING_MAX_LINES + 1)])
def test_every_line_worker_stays_on_the_cpu_the_network_gave_it(name: str, params: dict[str, int],
                                                                 links: int) -> None:
    """Order on the path (testbed/net/plan.py): each worker thread may run on one CPU only,
    the one its line's stats and the network's description name, and the workers spread over
    the CPUs."""
    allowed = sorted(os.sched_getaffinity(0))
    topo = topologies.create(name, path=PathShape(rtt_ms=2), **params)
    with Network(topo, NetConfig(link_backend="userspace", delay_helper="c")) as net:
        lines = {h.name.split(":", 1)[1]: h.proc.pid for h in net.helpers
                 if h.name.startswith("delayline:")}
        placed = {name: _worker_cpus(pid) for name, pid in lines.items()}
        described = net.describe()["line_cpus"]
    assert len(lines) == links
    threads = delayhelper.threads(links)
    workers = ["dl-a2b", "dl-b2a"] if threads == 2 else ["dl-both"]
    for i, link in enumerate(sorted(lines, key=list(described).index)):
        want = delayhelper.line_cpus(i, links, allowed)
        assert described[link] == want == net.link_reports[link]["cpus"]
        assert placed[link] == {w: str(want[k % len(want)]) for k, w in enumerate(workers)}
    used = {cpu for cpus in described.values() for cpu in cpus}
    assert used == set(allowed[:links * threads])
    assert set(described) == set(lines)


_SINK = r"""
import hashlib, socket, sys
listener = socket.create_server(("0.0.0.0", 5001))
print("ready", flush=True)
conn, _ = listener.accept()
digest, total = hashlib.sha256(), 0
while chunk := conn.recv(1 << 16):
    digest.update(chunk)
    total += len(chunk)
conn.sendall(f"{total} {digest.hexdigest()}".encode())
"""

_SOURCE = r"""
import hashlib, random, socket, sys
payload = random.Random(3).randbytes(int(sys.argv[2]))
conn = socket.create_connection((sys.argv[1], 5001), timeout=30)
conn.sendall(payload)
conn.shutdown(socket.SHUT_WR)
reply = conn.recv(1024).decode()
print("ok" if reply == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}" else reply)
"""


def _backlog_drops() -> int:
    """Frames the kernel dropped because a CPU's input backlog was full, machine-wide since
    boot (/proc/net/softnet_stat, second column): where a burst the line releases into a veth
    beyond net.core.netdev_max_backlog goes, unseen by the line's send."""
    lines = Path("/proc/net/softnet_stat").read_text().splitlines()
    return sum(int(line.split()[1], 16) for line in lines if line.strip())


@pytest.mark.parametrize("ring, offloads", [(True, "gso"), (True, "wire"), (False, "gso")])
def test_rx_ring_forwards_every_frame_intact(ring: bool, offloads: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Read through the PACKET_RX_RING or with recvmmsg, a transfer arrives byte for byte, and
    every frame the line took in it read one way: super-frames too big for a slot through the
    socket's queue, in order (TCP would otherwise retransmit)."""
    monkeypatch.setattr(delayhelper, "RX_RING_MAX_LINES", 4 if ring else 0)
    topo = topologies.create("direct", path=PathShape(rtt_ms=4))
    with Network(topo, NetConfig(link_backend="userspace", delay_helper="c",
                                 offloads=offloads)) as net:
        net.start_helper("server", "sink", [sys.executable, "-c", _SINK], ready="ready",
                         essential=False)  # exits after its one connection
        backlog = _backlog_drops()
        # The client on the CPU of the worker that brings it the server's ACKs, so every send
        # of its own comes from one CPU and reaches the line in order (a host's sends from two
        # CPUs may not, under load: testbed/net/plan.py); what reaches the server out of order
        # is then the line's doing.
        acks_cpu = net.line_cpus["client-server"][-1]
        out = net.run("client", ["taskset", "-c", str(acks_cpu), sys.executable, "-c", _SOURCE,
                                 net.ip("server"), str(8 << 20)], timeout=60)
        ofo = net.run("server", ["nstat", "-az", "TcpExtTCPOFOQueue"])
        # Machine-wide, so a parallel test's drops count too: a diagnosis, not an assertion.
        backlog_drops = _backlog_drops() - backlog
    counters = {name: {k: v for k, v in d.items() if k.startswith(("frames", "dropped", "rx_",
                                                                   "tx_", "in_flight"))}
                for name, d in net.link_reports["client-server"]["directions"].items()}
    assert out.strip() == "ok", (out, counters)
    # No segment reached the server out of order: the line lost and reordered nothing (a
    # retransmission would not say so: a tail loss probe on a loaded machine is one).
    assert ofo.split()[-2] == "0", (ofo, counters, f"input backlog drops: {backlog_drops}")
    for name, d in net.link_reports["client-server"]["directions"].items():
        assert d["dropped_trunc"] == d["dropped_runt"] == d["dropped_rcvbuf"] == 0, name
        assert d["frames"] == d["frames_in"] > 0, name
        r = d["rx_ring"]
        assert r["state"] == ("on" if ring else "off") and r["error"] is None, name
        assert net.link_reports["client-server"]["threads"] == (2 if ring else 1)
        assert r["frames"] == (d["frames_in"] if ring else 0), name
    a2b = net.link_reports["client-server"]["directions"]["a2b"]
    # Super-frames beyond a 2 KB slot (not every one: two small segments fit) are read whole
    # from the queue; on a 1500-byte link every frame that does not fit is a super-frame.
    copied = a2b["rx_ring"]["copied"]
    if ring and offloads == "gso":
        assert 0 < copied <= a2b["gso_frames"]
    else:
        assert copied == 0
    assert (a2b["gso_frames"] > 0) == (offloads == "gso")


def test_stats_written_while_frames_flow_are_whole() -> None:
    """SIGUSR1 while a transfer runs through the line's two threads: every snapshot is whole,
    each frame sent counted once in its direction's delay and lateness samples."""
    topo = topologies.create("direct", path=PathShape(rtt_ms=4))
    with Network(topo, NetConfig(link_backend="userspace", delay_helper="c")) as net:
        line = next(h for h in net.helpers if h.name.startswith("delayline:"))
        stats = net.workdir / "delayline-client-server.json"
        net.start_helper("server", "sink", [sys.executable, "-c", _SINK], ready="ready",
                         essential=False)
        out: list[str] = []
        transfer = threading.Thread(target=lambda: out.append(net.run(
            "client", [sys.executable, "-c", _SOURCE, net.ip("server"), str(32 << 20)],
            timeout=60)))
        transfer.start()
        snapshots = []
        while transfer.is_alive() or not snapshots:
            os.kill(line.proc.pid, signal.SIGUSR1)
            time.sleep(0.02)
            if stats.exists():
                snapshots.append(json.loads(stats.read_text()))
        transfer.join()
    assert [o.strip() for o in out] == ["ok"]
    assert snapshots[-1]["threads"] == 2 and all(not s["final"] for s in snapshots)
    for snap in snapshots:
        for name, d in snap["directions"].items():
            assert d["delay_ms"]["count"] == d["lateness_us"]["count"] == d["frames"], name
            assert d["frames"] <= d["frames_in"], name
    assert snapshots[-1]["directions"]["a2b"]["frames"] > 0


def test_compiled_line_reports_its_timing_and_priority() -> None:
    topo = topologies.create("direct", path=PathShape(rtt_ms=4))
    with Network(topo, NetConfig(link_backend="userspace", delay_helper="c")) as net:
        _ping(net, 10)
    report = net.link_reports["client-server"]
    assert report["sched_policy"].startswith(("SCHED_FIFO:10", "SCHED_OTHER (SCHED_FIFO:"))
    assert 0 < report["lead_us"] <= 2000
    assert report["spin_budget"] == 0.25  # one line: the per-line cap
    assert report["threads"] == 2  # few lines: one thread per direction
    assert 0 < report["max_rss_kb"] < 64 * 1024


def test_fanin_clients_parameter_builds_that_many_shaped_links() -> None:
    topo = topologies.create("fanin:clients=4", path=PathShape(rtt_ms=2))
    with Network(topo, NetConfig(link_backend="userspace")) as net:
        lines = [h for h in net.helpers if h.name.startswith("delayline:")]
        assert len(lines) == 5
        out = net.run("client4", ["ping", "-n", "-c", "2", "-i", "0.01", *PING_DEADLINE,
                                  net.ip("server")])
    assert replies(out) == 2, out
    assert all(r["spin_budget"] == 0.1 for r in net.link_reports.values())  # 0.5 / 5 lines
    assert all(r["threads"] == 1 for r in net.link_reports.values())


def test_a_link_beyond_the_helper_limits_is_refused_before_building() -> None:
    before = set(STATE_DIR.glob(f"net-{os.getpid()}-*.json")) if STATE_DIR.is_dir() else set()
    topo = topologies.create("direct", path=PathShape(rtt_ms=10, rate_bps=500))
    with pytest.raises(ConfigError, match="rate 500 bit/s outside"):
        Network(topo, NetConfig(link_backend="userspace")).start()
    after = set(STATE_DIR.glob(f"net-{os.getpid()}-*.json")) if STATE_DIR.is_dir() else set()
    assert after == before
    proc = subprocess.run([sys.executable, "-m", "testbed", "probe", "--rtt", "10ms",
                           "--rate", "500bit", "--link-backend", "userspace"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "rate 500 bit/s outside" in proc.stderr


@pytest.mark.parametrize("rx_ring, threads", [("off", 1), ("on", 1), ("on", 2)])
def test_compiled_line_exits_when_its_interface_is_gone(tmp_path: Path, rx_ring: str,
                                                        threads: int) -> None:
    """A line whose veth peer vanished (its namespace died with a killed run) must not spin on
    the socket error: it exits on its own, with the reason in its stats (ring or not, one
    thread or one per direction)."""
    if not BINARY.exists():
        pytest.skip("compiled delay line not built")
    ns = f"tcpinc-dlgone-{os.getpid()}"
    stats = tmp_path / "stats.json"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    proc = None
    try:
        for a, b in (("a0", "a1"), ("b0", "b1")):
            subprocess.run(["ip", "-n", ns, "link", "add", a, "type", "veth", "peer", "name", b],
                           check=True)
            for name in (a, b):
                subprocess.run(["ip", "-n", ns, "link", "set", name, "up"], check=True)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, str(BINARY), "--if-a", "a0", "--if-b", "b0",
             "--a2b", "delay_ns=1000000", "--b2a", "delay_ns=1000000", "--stats", str(stats),
             "--rx-ring", rx_ring, "--threads", str(threads)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        subprocess.run(["ip", "-n", ns, "link", "del", "a1"], check=True)
        # A liveness bound, not a timing figure: the line exits at its next turn.
        assert proc.wait(timeout=30) == 1
        assert "interface a0 or b0 is gone" in (proc.stderr.read() if proc.stderr else "")
        report = json.loads(stats.read_text())
        assert report["error"] == "interface a0 or b0 is gone"
        assert report["directions"]["a2b"]["rx_ring"]["state"] == rx_ring
        assert report["threads"] == threads
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)
