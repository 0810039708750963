"""The `tcpinc` command (also `python -m testbed`).

Every user error (unknown name, bad value, missing feature, not root) is one
line on stderr naming the problem and the fix, with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from testbed import log
from testbed.errors import ConfigError, TestbedError
from testbed.net.delayhelper import HELPERS
from testbed.net.plan import RX_STEERING_MODES, SEND_LEAD_MODES
from testbed.net.shaping import BACKENDS, parse_loss, parse_rate_bps, parse_time_ms


def _path_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rtt", default="0ms", help="end-to-end RTT, e.g. 50ms")
    p.add_argument("--jitter", default="0ms", help="end-to-end jitter, e.g. 1ms")
    p.add_argument("--loss", default="0%", help="loss on the bottleneck link, e.g. 0.5%%")
    p.add_argument("--rate", default=None, help="bottleneck rate, e.g. 100mbit")
    p.add_argument("--queue", type=int, default=None, help="bottleneck queue limit (packets)")
    p.add_argument("--link-backend", default="auto", choices=BACKENDS)
    p.add_argument("--delay-helper", default="auto", choices=HELPERS,
                   help="userspace links: compiled delay line (c) or the Python fallback")
    p.add_argument("--rx-steering", default="off", choices=RX_STEERING_MODES,
                   help="rps: delay lines on one CPU, the hosts' input on the others (more "
                        "packets per second, a hop between CPUs per frame; testbed/net/plan.py)")
    _send_lead_arg(p)
    p.add_argument("--seed", type=int, default=1)


def _send_lead_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--send-lead", default="auto", choices=SEND_LEAD_MODES,
                   help="compiled delay line: start a send after idleness early by the send "
                        "path's measured time to the device (auto), or at the due time (off); "
                        "testbed/net/delayline_c/txstamp.c")


MAX_RTT_MS = 10_000.0  # 10 s: far beyond any real path (a geostationary hop is ~0.6 s)


def _bounded_ms(flag: str, text: str) -> float:
    value = parse_time_ms(text)
    if value > MAX_RTT_MS:
        raise ConfigError(f"{flag} {text} is longer than {MAX_RTT_MS / 1000:g} s",
                          f"give {flag} up to {MAX_RTT_MS:g}ms")
    return value


def _path_shape(args: argparse.Namespace) -> Any:
    from topologies import PathShape

    return PathShape(
        rtt_ms=_bounded_ms("--rtt", args.rtt),
        jitter_ms=_bounded_ms("--jitter", args.jitter),
        loss=parse_loss(args.loss),
        rate_bps=parse_rate_bps(args.rate) if args.rate else None,
        queue_packets=args.queue,
    )


def _datapath_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eno-datapath", default="auto", choices=["auto", "bpf", "nfqueue"],
                   help="ENO in the kernel (bpf sock_ops) or through the NFQUEUE hook; "
                        "auto: bpf where the kernel supports it")


def cmd_probe(args: argparse.Namespace) -> int:
    from testbed.apps.transport import get_transport
    from testbed.probe import ProbeConfig, probe

    proto = arm_name(args.proto, resume=args.resume, early_data=args.early_data, tfo=args.tfo)
    transport = get_transport(proto, args.policy)
    if args.transparent and proto != "plain" and not getattr(transport, "uses_eno", False):
        raise ConfigError(f"--transparent runs the proxies with an ENO arm, not {proto!r}",
                          "use --proto tcpcrypt, tls, eno-test or plain (proxies only)")
    topology = args.topology or ("middlebox" if args.middlebox else "direct")
    cfg = ProbeConfig(
        topology=topology, path=_path_shape(args), proto=proto,
        middlebox=args.middlebox, repeat=args.repeat, response_size=args.response_size,
        link_backend=args.link_backend, delay_helper=args.delay_helper, seed=args.seed,
        rx_steering=args.rx_steering, send_lead=args.send_lead,
        pcap_dir=Path(args.pcap_dir) if args.pcap_dir else None, policy=args.policy,
        transparent=args.transparent,
        keylog=args.keylog,
        eno_datapath=args.eno_datapath,
    )
    records = probe(cfg)
    for record in records:
        print(json.dumps(record), flush=True)
    died = next((r["helper_failure"] for r in records if r.get("helper_failure")), None)
    if died:
        # The records above are kept; the run still failed.
        complete = sum(bool(r.get("bytes_ok")) for r in records)
        print(f"tcpinc: error: {died} ({complete} of {len(records)} connection records "
              f"above completed)", file=sys.stderr)
        return 1
    return 0


def arm_name(proto: str, *, resume: bool, early_data: bool, tfo: bool) -> str:
    """`--proto tls --early-data` -> `tls-0rtt`: the variant flags name a protocol arm.

    Arms: NAME, NAME-resume (the first connection is fresh, each later one resumes the
    one before), NAME-0rtt (resumed with early data), and -tfo for TCP Fast Open.
    """
    name = proto
    if early_data:
        name += "-0rtt"
    elif resume:
        name += "-resume"
    if tfo:
        name += "-tfo"
    return name


def cmd_run(args: argparse.Namespace) -> int:
    from experiments import runner

    return runner.run_cli(args)


def cmd_merge(args: argparse.Namespace) -> int:
    from experiments import runner

    print(json.dumps(runner.merge([Path(d) for d in args.run_dirs], Path(args.out))))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from experiments.report import write_report

    print(json.dumps({"report": str(write_report(Path(args.results)))}))
    return 0


def cmd_analyse(args: argparse.Namespace) -> int:
    from experiments import runner

    print(json.dumps(runner.analyse_cli(Path(args.run_dir))))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from experiments import compare

    result = compare.compare_runs(Path(args.run_a), Path(args.run_b), args.tolerance)
    print(json.dumps(result) if args.json else compare.format_comparison(result))
    return 0 if result["repeats"] else 1


def cmd_bench(args: argparse.Namespace) -> int:
    if args.target == "eno-hook":
        from testbed.eno import bench as eno_bench

        eno_bench.main(args)
    elif args.target in ("handshake", "throughput"):
        from testbed import bench_teps

        bench_teps.main(args)
    elif args.target == "scheduling":
        from experiments import bench_scheduling

        bench_scheduling.main(args)
    elif args.target == "wakeup":
        from testbed import bench_wakeup

        bench_wakeup.main(args)
    elif args.target == "replay":
        from testbed import bench_replay

        bench_replay.main(args)
    elif args.target == "endpoints":
        from testbed import bench_endpoints

        bench_endpoints.main(args)
    elif args.target == "transparent":
        from testbed.transparent import bench as transparent_bench

        transparent_bench.main(args)
    else:
        from testbed.net import bench

        bench.main(args)
    return 0


def cmd_ladder(args: argparse.Namespace) -> int:
    from testbed.ladder_draw import render

    print(json.dumps(render(Path(args.pcap), Path(args.out), args.conn)))
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from testbed.net.state import clean_all

    reports = clean_all(force=args.force)
    for report in reports:
        print(json.dumps(report))
    if not reports:
        print(json.dumps({"cleaned": 0, "note": "nothing recorded was left behind"}))
    return 0


def cmd_topologies(args: argparse.Namespace) -> int:
    import topologies

    for name, text in topologies.describe().items():
        print(f"{name:12} {text}")
    return 0


def cmd_middleboxes(args: argparse.Namespace) -> int:
    import middleboxes

    for entry in middleboxes.catalogue():
        params = ",".join(f"{k}={v}" for k, v in entry["params"].items()) or "-"
        aliases = f" (alias: {', '.join(entry['aliases'])})" if entry["aliases"] else ""
        print(f"{entry['name']}{aliases}: {entry['description']}")
        print(f"    mechanism: {entry['mechanism']}\n    params: {params}")
        print(f"    seen in: {entry['evidence']}")
    return 0


def cmd_sid(args: argparse.Namespace) -> int:
    from testbed.transparent import control

    reply = control.query(control.parse_addr(args.local), control.parse_addr(args.remote),
                          name=args.name)
    print(json.dumps(reply))
    return 0 if reply.get("found") else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tcpinc", description=__doc__)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_probe, _add_run, _add_analysis, _add_bench, _add_tools):
        add(sub)
    return parser


def _add_probe(sub: Any) -> None:
    """`tcpinc probe`."""
    p = sub.add_parser("probe", help="measure N connections over one emulated path")
    p.add_argument("--topology", default=None,
                   help="direct, middlebox, chain, fanin (fanin:clients=N)")
    p.add_argument("--proto", default="plain",
                   help="plain, plain-tfo, tcpcrypt[-CURVE], tls, tls-noeno, eno-test (TEST "
                        "ONLY); --resume/--early-data/--tfo pick variants (README: arms)")
    p.add_argument("--policy", default=None, choices=["off", "opportunistic", "required"],
                   help="ENO protocols: what to do when ENO fails (default opportunistic)")
    p.add_argument("--middlebox", default=None, help="NAME[:param=value,...]")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--resume", action="store_true",
                   help="later connections resume the first (session resumption)")
    p.add_argument("--early-data", action="store_true",
                   help="resumed connections send the request as 0-RTT early data")
    p.add_argument("--tfo", action="store_true", help="TCP Fast Open (non-ENO arms)")
    p.add_argument("--response-size", type=int, default=1024)
    p.add_argument("--transparent", action="store_true",
                   help="plain-TCP applications through per-host proxies speaking --proto "
                        "(an ENO arm, or plain for the proxies alone)")
    p.add_argument("--pcap-dir", default=None, help="keep the client capture here")
    p.add_argument("--keylog", action="store_true",
                   help="write TLS/tcpcrypt key logs (SECRETS) next to the capture")
    _datapath_arg(p)
    _path_args(p)
    p.set_defaults(func=cmd_probe)


def _add_run(sub: Any) -> None:
    """`tcpinc run`."""
    p = sub.add_parser("run", help="run an experiment into results/")
    p.add_argument("experiment", help="latency, or all")
    profile = p.add_mutually_exclusive_group()
    profile.add_argument("--quick", dest="profile", action="store_const", const="quick")
    profile.add_argument("--full", dest="profile", action="store_const", const="full")
    p.set_defaults(profile="quick")
    p.add_argument("--repeat", type=int, default=None)
    p.add_argument("--out", default="results")
    p.add_argument("--link-backend", default="auto", choices=BACKENDS)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--run-id", default=None,
                   help="run directory name; an existing one is resumed (finished points kept)")
    p.add_argument("--shard", default=None, help="i/n: run every n-th point from the i-th")
    p.add_argument("--protocols", default=None,
                   help="comma-separated protocol arms to keep (default: the profile's)")
    _datapath_arg(p)
    p.add_argument("--executor", default="local", choices=["local", "dask"],
                   help="where points run: here, or on a Dask distributed cluster")
    p.add_argument("--serial", action="store_true",
                   help="local: one point at a time in every experiment (by default the "
                        "experiments whose points mostly wait run several at once)")
    p.add_argument("--scheduler", default=None,
                   help="dask: the scheduler's address, tcp://HOST:8786")
    p.add_argument("--ssh", default=None,
                   help="dask: start scheduler and workers over ssh on host1,host2,...")
    p.add_argument("--retries", type=int, default=2,
                   help="dask: resubmit a point whose worker died up to this many times")
    p.add_argument("--connect-timeout", type=float, default=10.0,
                   help="dask: seconds to reach the scheduler and a worker")
    p.add_argument("--dry-run", action="store_true",
                   help="run nothing: print the points and the projected wall time")
    p.add_argument("--workers", type=int, default=None,
                   help="with --dry-run: project the wall time on this many workers")
    p.set_defaults(func=cmd_run)


def _add_analysis(sub: Any) -> None:
    """`tcpinc merge`, `report`, `analyse`, `compare`."""
    p = sub.add_parser("merge", help="combine shard run directories of one experiment")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("report", help="write REPORT.md from the newest finished runs")
    p.add_argument("--results", default="results")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("analyse", help="redo the analysis of a run directory")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_analyse)

    p = sub.add_parser("compare", help="does a rerun repeat a run? per-point median TTFB "
                                       "differences and the noisy verdicts (exit 1: it does not)")
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--tolerance", type=float, default=2.0,
                   help="largest difference of a point's median, in %% of run A's (default 2)")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(func=cmd_compare)


def _add_bench(sub: Any) -> None:
    """`tcpinc bench`."""
    p = sub.add_parser("bench", help="benchmarks that print measured figures")
    p.add_argument("target", choices=["emulator", "endpoints", "eno-hook", "handshake",
                                      "replay", "scheduling", "throughput", "transparent",
                                      "wakeup"])
    p.add_argument("--out", default="results/bench")
    p.add_argument("--quick", action="store_true", help="fewer probes (for tests)")
    p.add_argument("--link-backend", default="auto", choices=BACKENDS)
    p.add_argument("--delay-helper", default="both", choices=(*HELPERS, "both"),
                   help="emulator: which delay line(s) to measure (default both, side by side)")
    _send_lead_arg(p)
    p.add_argument("--fanin-clients", default="10,100",
                   help="emulator: fanin:clients=N networks to time (start, stop, memory); "
                        "comma-separated N, or none")
    p.set_defaults(func=cmd_bench)


def _add_tools(sub: Any) -> None:
    """`tcpinc ladder`, `clean`, `sid`, `topologies`, `middleboxes`."""
    p = sub.add_parser("ladder", help="draw a message sequence chart of one connection")
    p.add_argument("pcap")
    p.add_argument("--conn", type=int, default=0, help="which TCP connection (0 = first)")
    p.add_argument("--out", required=True, help="FILE.png or FILE.svg")
    p.set_defaults(func=cmd_ladder)

    p = sub.add_parser("clean", help="remove what a crashed run left behind")
    p.add_argument("--force", action="store_true", help="also networks whose owner still runs")
    p.set_defaults(func=cmd_clean)

    p = sub.add_parser("sid", help="inside a transparent host: session ID of a connection")
    p.add_argument("local", help="the application socket's local IP:PORT")
    p.add_argument("remote", help="its peer's IP:PORT")
    p.add_argument("--name", default="tcpinc-transparent", help="the proxy's query socket")
    p.set_defaults(func=cmd_sid)

    sub.add_parser("topologies", help="list topologies").set_defaults(func=cmd_topologies)
    sub.add_parser("middleboxes", help="list middlebox models").set_defaults(
        func=cmd_middleboxes
    )


class Terminated(Exception):
    """SIGTERM, raised so every teardown (finally, __exit__) runs."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log.setup(args.verbose)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args.func(args))
    except TestbedError as exc:
        print(f"tcpinc: error: {exc.one_line()}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`tcpinc middleboxes | head`): not an error of ours.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stdout must stay valid at exit
        return 0
    except (KeyboardInterrupt, Terminated):
        print("tcpinc: interrupted; the network was torn down", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
