"""Link shaping on real kernel traffic: delay, loss and rate within stated tolerances."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

import topologies
from testbed.net.network import NetConfig, Network
from tests.helpers import assert_within
from topologies import PathShape

PING_RE = re.compile(r"time=([0-9.]+) ms")


def ping(net: Network, count: int, interval: str = "0.01", every_reply: bool = True
         ) -> list[float]:
    # every_reply: a deadline, so ping waits for all replies instead of two RTTs after its
    # last probe (ping(8) -W; tests/emulation/test_delay_helper.py, PING_DEADLINE). A lossy
    # path would hold it until the deadline: there the old wait stays.
    wait = ["-w", "20"] if every_reply else ["-W", "1"]
    out = net.run("client", ["ping", "-n", "-c", str(count), "-i", interval, *wait,
                             net.ip("server")], timeout=60)
    return [float(x) for x in PING_RE.findall(out)]


def test_delay_matches_configuration_and_is_reported():
    with Network(topologies.create("direct", path=PathShape(rtt_ms=40))) as net:
        rtts = ping(net, 50)
    assert len(rtts) == 50
    # Exact: no echo returns before the configured RTT, and the link reports the delay it
    # applied, never below the configured one-way delay. How close the median gets is an
    # accuracy figure that load moves: `tcpinc bench emulator` prints it.
    assert min(rtts) >= 40.0, "a packet was released before its due time"
    applied = net.applied_delay()["client-server"]
    for direction in ("a2b", "b2a"):
        assert applied[direction]["source"] == "measured"
        assert applied[direction]["frames"] >= 50 and applied[direction]["dropped_loss"] == 0
        assert applied[direction]["configured_ms"] == 20.0, applied[direction]
        assert applied[direction]["median_ms"] >= 20.0, applied[direction]


def test_delay_split_over_a_chain():
    with Network(topologies.create("chain", path=PathShape(rtt_ms=30))) as net:
        rtts = ping(net, 20)
        applied = net.applied_delay()
    # The RTT is split over three links; each reports what it applied, and the sum of the
    # configured one-way delays is the configured RTT, which no echo beats.
    assert len(applied) == 3 and len(rtts) == 20
    configured = sum(d["configured_ms"] for link in applied.values() for d in link.values())
    assert abs(configured - 30.0) < 1e-9, applied
    for link in applied.values():
        for d in link.values():
            assert d.get("median_ms", d["configured_ms"]) >= d["configured_ms"], applied
    assert min(rtts) >= 30.0, "a packet was released before its due time"


def test_loss_is_applied_at_the_configured_rate():
    path = PathShape(rtt_ms=2, loss=0.10)
    with Network(topologies.create("direct", path=path), NetConfig(seed=7)) as net:
        rtts = ping(net, 600, interval="0.002", every_reply=False)
    report = net.applied_delay()["client-server"]
    dropped = sum(report[d]["dropped_loss"] for d in ("a2b", "b2a"))
    seen = sum(report[d]["frames"] for d in ("a2b", "b2a")) + dropped
    assert_within(dropped / seen, 0.10, 0.03, what="delay-line loss fraction")
    # An echo survives only if request and reply both do: 0.9^2 = 0.81.
    assert_within(len(rtts) / 600, 0.81, 0.05, what="ping delivery ratio")


def test_rate_limits_tcp_throughput():
    path = PathShape(rtt_ms=10, rate_bps=20_000_000, queue_packets=100)
    with Network(topologies.create("direct", path=path)) as net:
        # Not one-off (-1): a server that exits after its test, before the network stops,
        # would count as a helper that died early.
        net.start_helper("server", "iperf3", ["iperf3", "-s", "-p", "5201"])
        out = ""
        for _ in range(50):  # the server needs a moment to listen
            if ":5201" in net.run("server", ["ss", "-ltnH", "sport = :5201"]):
                out = net.run("client", ["iperf3", "-c", net.ip("server"), "-p", "5201",
                                         "-t", "3", "-J"], timeout=30)
                break
            net.run("server", ["sleep", "0.05"])
    bps = json.loads(out)["end"]["sum_received"]["bits_per_second"]
    # One-sided, physics: the limiter never lets more through than the rate (TCP payload share
    # of a 1514-byte frame is 1448/1514). A load spike can only slow the transfer, so the
    # floor is a wide sanity bound (a quarter of the rate), not an accuracy claim.
    assert bps <= 20_000_000 * 1448 / 1514 * 1.02, bps
    assert bps > 5_000_000, bps


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="receive steering needs 2 CPUs")
def test_rx_steering_pins_the_line_and_steers_the_hosts_input():
    path = PathShape(rtt_ms=10)
    with Network(topologies.create("direct", path=path), NetConfig(rx_steering="rps")) as net:
        steering = net.describe()["rx_steering"]
        line = next(h.proc for h in net.helpers if h.name.startswith("delayline:"))
        status = Path(f"/proc/{line.pid}/status").read_text()
        masks = {node: net.run(node, ["cat", f"/sys/class/net/{net.intf(node)}/queues/rx-0/"
                                      "rps_cpus"]).strip().lstrip("0,")
                 for node in ("client", "server")}
        rtts = ping(net, 10)
    cpu = min(os.sched_getaffinity(0))
    assert steering["mode"] == "rps" and steering["line_cpu"] == cpu
    assert f"Cpus_allowed_list:\t{cpu}\n" in status  # the line (and its threads) on one CPU
    assert masks == {"client": steering["rps_cpus"], "server": steering["rps_cpus"]}
    assert len(rtts) == 10 and min(rtts) >= 10.0  # the path still works and keeps its delay
