"""`tcpinc bench emulator`: the link backend measured against its configuration.

Side by side for the backend this kernel runs (netem where it exists, the
userspace delay line otherwise): ping and TCP-connect RTT error (median, p99)
at 0/10/50/200 ms RTT; TCP throughput through one emulated link at 20 ms RTT
(iperf3, both offload modes); the highest 64-byte UDP packet rate forwarded at
< 1 % loss; and the delay line's CPU per packet. Prints a table and writes a CSV.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import topologies
from testbed.errors import CommandError
from testbed.net.network import NetConfig, Network
from testbed.net.shaping import choose_backend
from topologies import PathShape

RTTS_MS = (0, 10, 50, 200)
PPS_RATES = (25_000, 50_000, 100_000, 150_000)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _errors(samples: list[float], configured: float) -> dict[str, float]:
    errs = [s - configured for s in samples]
    return {"median_err_ms": statistics.median(errs), "p99_err_ms": quantile(errs, 0.99),
            "min_err_ms": min(errs), "n": len(errs)}


def _network(rtt_ms: float, backend: str, offloads: str = "wire") -> Network:
    topo = topologies.create("direct", path=PathShape(rtt_ms=rtt_ms))
    return Network(topo, NetConfig(link_backend=backend, offloads=offloads))


def _listen(net: Network, port: int) -> None:
    net.start_helper("server", f"listener:{port}",
                     [sys.executable, "-m", "testbed.apps.server", "--port", str(port)],
                     ready="ready")


def _probe(net: Network, mode: str, count: int, rtt_ms: float) -> list[float]:
    text = net.run("client", [sys.executable, "-m", "testbed.net.rttprobe", "--mode", mode,
                              "--server", net.ip("server"), "--port", "5001",
                              "--count", str(count)],
                   timeout=count * (0.01 + rtt_ms / 1e3) + 30)
    samples: list[float] = json.loads(text)
    if len(samples) < count:
        raise CommandError(["rttprobe", mode], -1, f"{count - len(samples)} probes lost", "client")
    return samples


def measure_rtt(backend: str, rtt_ms: float, pings: int, connects: int) -> list[dict[str, Any]]:
    """ICMP echo (microsecond timer, one probe in flight) and TCP connect() RTTs."""
    with _network(rtt_ms, backend) as net:
        ping = _probe(net, "icmp", pings, rtt_ms)
        _listen(net, 5001)
        connect = _probe(net, "connect", connects, rtt_ms)
    rows = []
    for method, samples in (("icmp-echo", ping), ("tcp-connect", connect)):
        rows.append({"metric": "rtt", "method": method, "configured_rtt_ms": rtt_ms,
                     "median_ms": statistics.median(samples), **_errors(samples, rtt_ms)})
    return rows


def _iperf3_server(net: Network) -> None:
    net.start_helper("server", "iperf3", ["iperf3", "-s", "-p", "5201"])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if ":5201" in net.run("server", ["ss", "-ltnH", "sport = :5201"]):
            return
        time.sleep(0.05)
    raise CommandError(["iperf3", "-s"], -1, "server did not listen within 5 s", "server")


def _delayline_cpu(reports: dict[str, Any]) -> dict[str, float]:
    cpu = sum(r["cpu_s"] for r in reports.values())
    frames = sum(d["frames"] for r in reports.values() for d in r["directions"].values())
    return {"delayline_cpu_s": cpu, "frames": frames,
            "cpu_us_per_packet": cpu / frames * 1e6 if frames else float("nan")}


def measure_throughput(backend: str, offloads: str, seconds: int) -> dict[str, Any]:
    with _network(20.0, backend, offloads) as net:
        _iperf3_server(net)
        out = net.run("client", ["iperf3", "-c", net.ip("server"), "-p", "5201", "-t",
                                 str(seconds), "-J"], timeout=seconds + 30)
    result = json.loads(out)["end"]
    row = {"metric": "tcp-throughput", "method": f"iperf3 ({offloads} offloads)",
           "configured_rtt_ms": 20.0,
           "gbit_s": result["sum_received"]["bits_per_second"] / 1e9,
           "retransmits": result["sum_sent"].get("retransmits")}
    if net.link_reports:
        row.update(_delayline_cpu(net.link_reports))
    return row


def measure_pps(backend: str, rates: tuple[int, ...], seconds: int) -> list[dict[str, Any]]:
    rows = []
    with _network(20.0, backend) as net:
        _iperf3_server(net)
        for rate in rates:
            out = net.run("client", ["iperf3", "-c", net.ip("server"), "-p", "5201", "-u",
                                     "-l", "64", "-b", str(rate * 64 * 8), "-t", str(seconds),
                                     "-J"], timeout=seconds + 30)
            udp = json.loads(out)["end"]["sum"]
            rows.append({"metric": "udp-pps", "method": "iperf3 -u -l 64",
                         "configured_rtt_ms": 20.0, "offered_pps": rate,
                         "received_pps": (udp["packets"] - udp["lost_packets"]) / seconds,
                         "loss_percent": udp["lost_percent"]})
            time.sleep(0.5)
    if net.link_reports:
        cpu = _delayline_cpu(net.link_reports)
        for row in rows:
            row["cpu_us_per_packet"] = cpu["cpu_us_per_packet"]
    return rows


def run_bench(backend: str, quick: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for rtt in RTTS_MS:
        pings = 50 if quick else (300 if rtt < 100 else 100)
        connects = 20 if quick else (200 if rtt < 100 else 100)
        rows += measure_rtt(backend, rtt, pings, connects)
    seconds = 2 if quick else 5
    for offloads in ("wire", "gso"):
        rows.append(measure_throughput(backend, offloads, seconds))
    rows += measure_pps(backend, PPS_RATES[:2] if quick else PPS_RATES, 2 if quick else 3)
    for row in rows:
        row["backend"] = backend
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'metric':15} {'method':24} {'cfg RTT':>8} {'result':>44}"]
    for r in rows:
        if r["metric"] == "rtt":
            result = (f"median {r['median_ms']:.3f} ms, err median {r['median_err_ms']:+.3f} "
                      f"p99 {r['p99_err_ms']:+.3f}")
        elif r["metric"] == "tcp-throughput":
            result = f"{r['gbit_s']:.2f} Gbit/s, retrans {r['retransmits']}"
            if "cpu_us_per_packet" in r:
                result += f", {r['cpu_us_per_packet']:.1f} us/pkt"
        else:
            result = (f"offered {r['offered_pps']/1e3:.0f}k pps -> {r['received_pps']/1e3:.1f}k,"
                      f" loss {r['loss_percent']:.2f}%")
        lines.append(f"{r['metric']:15} {r['method']:24} {r['configured_rtt_ms']:8.0f} "
                     f"{result:>44}")
    pps_ok = [r["offered_pps"] for r in rows if r["metric"] == "udp-pps"
              and r["loss_percent"] < 1.0]
    if pps_ok:
        lines.append(f"highest offered packet rate with < 1% loss: {max(pps_ok)/1e3:.0f}k pps")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    import pandas as pd

    backend = choose_backend(args.link_backend)
    rows = run_bench(backend, args.quick)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    csv = out / f"emulator-{backend}-{stamp}.csv"
    pd.DataFrame(rows).to_csv(csv, index=False, float_format="%.4f")
    print(format_table(rows))
    print(f"written: {csv}")
