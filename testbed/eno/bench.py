"""`tcpinc bench eno-hook`: what each ENO datapath costs, measured on a 0-delay link.

Both datapaths in one run, one ``direct`` network each: ``nfqueue`` (the hook on both hosts)
and, where the kernel supports it, ``bpf`` (the sock_ops program of testbed/eno/bpf attached
to both hosts' cgroups). Each network has three servers and one client process that
interleaves three kinds of connection round-robin, so a load change on the machine hits every
arm alike (other runs share this machine's two vCPUs); the order rotates from round to round,
because the first connection of a round is slower (the previous round's stream is still
closing) and that must not always be the same arm's:

* ``plain``: plain TCP to a port the hook's rules exclude: no segment enters NFQUEUE (the
  baseline, as without a hook);
* ``passthrough``: plain TCP to a port nobody registered: every handshake segment goes through
  the hook and back untouched (what an unrelated application on an ENO host pays);
* ``eno``: testbed.stream with the test TEP: announce, TCP handshake with ENO added and checked
  by both hooks, and the hook's verdict. Setup is measured up to the verdict (``eno_result``);
  the TEP handshake after it is the TEP's cost, reported separately.

What is timed is the same for every arm: ``connect()`` on a socket made and bound (port 0,
as the stream binds to announce its port) before the clock starts, with the same options
(TCP_NODELAY, a timeout); so ``eno_tcp_connect`` is what ENO adds to the kernel's TCP
handshake: the hooks' or the program's option work. What the stream does before connect()
(settings, socket, bind, the announcement or the offer written into the socket's storage)
is ``eno_prepare``, set beside ``plain_prepare`` (socket and bind); the phases after connect()
(the verdict, the TEP handshake) are counted from the start of the stream's connect() against
plain TCP's socket, bind and connect (``plain_setup``).

Each figure is the median and p99 over N connections per arm, plus the median of the paired
differences to ``plain`` (same round of the interleaving). The hooks' counters, read before
and after, give the CPU per intercepted packet (process CPU time over packets handled,
control-channel work included) and the wall time inside the packet callback.

On ``bpf`` no segment is queued to userspace (the hosts have no NFQUEUE rule, which the
bench checks): ``plain`` and ``passthrough`` both run through the program's callbacks without
ENO, and the verdict is the pure core's on the kernel's record. The kernel's own count of
the program's runs and their time (BPF_ENABLE_STATS while the client runs) gives the run
time per callback (``bpf_program``: every callback of all three arms, both hosts).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import topologies
from testbed.eno.rules import HookSpec, start_hook, stop_hook
from testbed.net.network import NetConfig, Network

PORTS = {"eno": 5000, "plain": 5001, "passthrough": 5002}
STATS_SNIPPET = (
    "import json; from testbed.eno.control import HookClient; "
    "print(json.dumps(HookClient().stats()))"
)
CLIENT = r'''
import json, socket, sys, time
from testbed.stream import StreamConfig, connect
server, rounds, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
config = StreamConfig(teps=("eno-test",))
out = {k: [] for k in ("plain", "plain_prepare", "passthrough", "eno", "eno_tcp",
                       "eno_prepare", "eno_tep", "eno_connected")}

def plain(port):
    """(socket + bind, connect) in ms: the stream's socket options and bind, no ENO."""
    start = time.perf_counter()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(5)
    sock.bind(("0.0.0.0", 0))
    ready = time.perf_counter()
    sock.connect((server, port))
    done = time.perf_counter()
    sock.close()
    return (ready - start) * 1e3, (done - ready) * 1e3

def eno():
    start = time.perf_counter()
    s = connect((server, 5000), config, timeout=5)
    if s.info.eno != "negotiated":  # every timed connection must have negotiated
        raise RuntimeError(f"ENO not negotiated: {s.info}")
    s.close()
    return start, s.info.phases

# Each round runs the three arms in a rotated order: the first connection of a round is
# slower (the previous round's stream is still closing on both hosts), and that must not
# fall on one arm.
for i in range(rounds + warmup):
    got = {}
    for arm in ("plain", "passthrough", "eno")[i % 3:] + ("plain", "passthrough", "eno")[:i % 3]:
        got[arm] = eno() if arm == "eno" else plain(5001 if arm == "plain" else 5002)
    (prep, a), (_, b), (start, p) = got["plain"], got["passthrough"], got["eno"]
    if i >= warmup:
        out["plain"].append(a)
        out["plain_prepare"].append(prep)
        out["passthrough"].append(b)
        out["eno"].append((p["eno_result"] - start) * 1e3)
        out["eno_tcp"].append((p["tcp_connected"] - p["eno_announced"]) * 1e3)
        out["eno_prepare"].append((p["eno_announced"] - start) * 1e3)
        out["eno_connected"].append((p["tcp_connected"] - start) * 1e3)
        out["eno_tep"].append((p["tep_handshake_done"] - start) * 1e3)
print(json.dumps(out))
'''


def hook_stats(net: Network, node: str) -> dict[str, Any]:
    """The hook's counters in ``node``, read over its control channel."""
    stats: dict[str, Any] = json.loads(net.run(node, [sys.executable, "-c", STATS_SNIPPET]))
    return stats


def summary(values: list[float], base: list[float] | None = None) -> dict[str, float]:
    ordered = sorted(values)
    out = {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered), 4),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 4),
    }
    if base is not None:
        deltas = sorted(v - b for v, b in zip(values, base, strict=True))
        out["added_median_ms"] = round(statistics.median(deltas), 4)
        out["added_p99_ms"] = round(deltas[min(len(deltas) - 1, int(0.99 * len(deltas)))], 4)
    return out


def _cpu(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    packets = after["callbacks"] - before["callbacks"]
    cpu = after["cpu_s"] - before["cpu_s"]
    return {
        "packets": packets,
        "cpu_us_per_packet": round(cpu / packets * 1e6, 1) if packets else None,
        "callback_us_median": after.get("callback_us_median"),
        "callback_us_p99": after.get("callback_us_p99"),
        "rss_kib": after["rss_kib"],
        # ctnetlink counter zeroing on each followed SYN (ctzero.py): calls and mean time
        "conntrack": after.get("conntrack"),
    }


def measure(rounds: int = 500, warmup: int = 50, datapath: str = "nfqueue") -> dict[str, Any]:
    """Run the interleaved arms on one datapath; returns the figures (ms, µs)."""
    spec = HookSpec(exclude_ports=(PORTS["plain"],))
    with Network(topologies.create("direct"), NetConfig()) as net:
        hooks = []
        for node in ("client", "server"):
            if datapath == "bpf":
                net.set_eno_bpf(node, True)
            else:
                hooks.append((node, start_hook(net, node, spec)))
        progs = [net.eno_bpf[node].pins / "prog" for node in net.eno_bpf]
        try:
            with _program_stats(progs) as programs:
                out, before, after = _run_arms(net, hooks, rounds, warmup)
            queued = {node: nfqueue_rules(net, node) for node in ("client", "server")}
        finally:
            for node, hook in hooks:
                stop_hook(net, node, hook)
        backend = net.backend
    times = json.loads(out)
    plain_setup = [p + c for p, c in zip(times["plain_prepare"], times["plain"], strict=True)]
    result: dict[str, Any] = {
        "datapath": datapath, "link": "direct, 0 ms", "link_backend": backend,
        "rounds": rounds, "nfqueue_rules": queued,
        "timed": "connect() on a socket made and bound before the clock starts, all arms",
        "plain_connect": summary(times["plain"]),
        "passthrough_connect": summary(times["passthrough"], times["plain"]),
        "eno_tcp_connect": summary(times["eno_tcp"], times["plain"]),
        "plain_prepare": summary(times["plain_prepare"]),
        "eno_prepare": summary(times["eno_prepare"], times["plain_prepare"]),
        "eno_setup_until_connected": summary(times["eno_connected"], plain_setup),
        "eno_setup_until_result": summary(times["eno"], plain_setup),
        "eno_until_tep_handshake_done": summary(times["eno_tep"], plain_setup),
    }
    if hooks:
        result["hooks"] = {node: _cpu(before[node], after[node]) for node in before}
    if programs:
        rounds_run = rounds + warmup
        result["bpf_program"] = _per_callback(programs, rounds_run)
    return result


@contextlib.contextmanager
def _program_stats(progs: list[Path]) -> Iterator[dict[str, dict[str, int]]]:
    """The kernel's run count and run time of each program over the block (its
    BPF_ENABLE_STATS switch is on while the block runs, for every program of the machine)."""
    out: dict[str, dict[str, int]] = {}
    if not progs:
        yield out
        return
    from testbed.eno.bpf import maps

    fd = maps.enable_stats()
    try:
        before = {str(p): _prog_counters(p) for p in progs}
        yield out
        for prog in progs:
            after = _prog_counters(prog)
            out[prog.parent.name] = {k: after[k] - before[str(prog)][k] for k in after}
    finally:
        os.close(fd)


def _prog_counters(prog: Path) -> dict[str, int]:
    proc = subprocess.run(["bpftool", "-j", "prog", "show", "pinned", str(prog)],
                          capture_output=True, text=True, timeout=30, check=True)
    info = json.loads(proc.stdout)
    return {"run_cnt": int(info.get("run_cnt", 0)), "run_time_ns": int(info.get("run_time_ns", 0))}


def _per_callback(programs: dict[str, dict[str, int]], rounds: int) -> dict[str, Any]:
    """Per host: callbacks run, ns per callback, and per round (one connection of each arm)."""
    out: dict[str, Any] = {}
    for host, c in programs.items():
        runs, ns = c["run_cnt"], c["run_time_ns"]
        out[host.rsplit("-", 1)[-1]] = {
            "callbacks": runs, "ns_per_callback": round(ns / runs) if runs else None,
            "callbacks_per_round": round(runs / rounds, 1),
            "us_per_round": round(ns / rounds / 1e3, 2)}
    return out


def _run_arms(net: Network, hooks: list[tuple[str, Any]], rounds: int, warmup: int
              ) -> tuple[str, dict[str, Any], dict[str, Any]]:
    for arm, port in PORTS.items():
        proto = "eno-test" if arm == "eno" else "plain"
        net.start_helper("server", f"server:{arm}", [
            sys.executable, "-m", "testbed.apps.server", "--port", str(port),
            "--proto", proto], ready="ready")
    before = {node: hook_stats(net, node) for node, _ in hooks}
    proc = net.popen("client", [sys.executable, "-c", CLIENT, net.ip("server"),
                                str(rounds), str(warmup)])
    out, err = proc.communicate(timeout=60 + rounds * 0.1)
    if proc.returncode != 0:
        raise RuntimeError(f"bench client failed: {err[-2000:]}")
    after = {node: hook_stats(net, node) for node, _ in hooks}
    return out, before, after


def nfqueue_rules(net: Network, node: str) -> int:
    """NFQUEUE rules in the host: 0 means no segment can reach a userspace hook."""
    return sum("NFQUEUE" in line for line in net.run(node, ["iptables-save"]).splitlines())


def compare(rounds: int, warmup: int) -> dict[str, Any]:
    """Both datapaths, one after the other (bpf only where the kernel takes the program)."""
    from testbed.eno.bpf.attach import support_problem

    out: dict[str, Any] = {"nfqueue": measure(rounds, warmup, "nfqueue")}
    problem = support_problem()
    out["bpf"] = measure(rounds, warmup, "bpf") if problem is None else {"unavailable": problem}
    if problem is None:
        nfq, bpf = out["nfqueue"], out["bpf"]
        out["bpf_minus_nfqueue_added_median_ms"] = {
            key: round(bpf[key]["added_median_ms"] - nfq[key]["added_median_ms"], 4)
            for key in ("eno_tcp_connect", "eno_prepare", "eno_setup_until_result",
                        "eno_until_tep_handshake_done")}
        out["target_bpf_tcp_connect_added_median_le_0.05_ms"] = (
            bpf["eno_tcp_connect"]["added_median_ms"] <= 0.05)
    return out


def main(args: Any) -> None:
    rounds = 100 if getattr(args, "quick", False) else 500
    result = compare(rounds=rounds, warmup=20 if rounds < 200 else 50)
    text = json.dumps(result, indent=1)
    print(text)
    out = Path(getattr(args, "out", "results/bench"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "eno-hook.json").write_text(text + "\n")
