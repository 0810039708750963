"""What a transparent proxy runs with: its command line and the stream configurations of
its protocol arm (proxy.py)."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from testbed.stream import Policy, StreamConfig
from testbed.teps.tcpcrypt.options import MAX_CHUNK
from testbed.transparent import control


def stream_configs(proto: str, policy: str) -> tuple[StreamConfig, StreamConfig]:
    """(outgoing, incoming) stream configurations of a protocol arm."""
    from testbed.apps.transport import get_transport

    if proto == "plain":
        off = StreamConfig(policy=Policy.OFF)
        return off, off
    transport = get_transport(proto, policy)
    if not getattr(transport, "uses_eno", False):
        raise ValueError(f"{proto} is not an ENO protocol")
    try:
        configs = (transport.config(server=False), transport.config(server=True))
    except TypeError:  # arms whose configuration does not depend on the side
        configs = (transport.config(), transport.config())
    return tuple(bulk_options(c) for c in configs)  # type: ignore[return-value]


def bulk_options(config: StreamConfig) -> StreamConfig:
    """A relay hands the core up to READ_SIZE bytes at once: tcpcrypt frames as large as
    RFC 8548's 16-bit frame length allows (the 16 KiB default would cost four frames, four
    nonces and four tags where one does)."""
    options = {name: dict(opts) for name, opts in config.tep_options.items()}
    for spec in config.specs():
        if spec.name.startswith("tcpcrypt"):
            options.setdefault(spec.name, {})["tcpcrypt.chunk_size"] = MAX_CHUNK
    return dataclasses.replace(config, tep_options=options)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m testbed.transparent.proxy")
    parser.add_argument("--proto", default="tcpcrypt")
    parser.add_argument("--policy", default="opportunistic",
                        choices=[p.value for p in Policy])
    parser.add_argument("--redirect-port", type=int, default=7690)
    parser.add_argument("--tproxy-port", type=int, default=7691)
    parser.add_argument("--listen-ports", default="",
                        help="comma-separated ports whose incoming connections are diverted")
    parser.add_argument("--gid", type=int, required=True)
    parser.add_argument("--name", default=control.DEFAULT_NAME)
    parser.add_argument("--records", type=Path)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--rt-priority", type=int, default=0, choices=range(0, 100),
                        metavar="0..99", help="SCHED_FIFO priority (0: ordinary scheduling)")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    args.listen_ports = [int(p) for p in args.listen_ports.split(",") if p]
    return args


def set_realtime(priority: int) -> str:
    """Run under SCHED_FIFO at ``priority`` where permitted; returns what the process got.

    The proxy stands in for a TEP inside the kernel (tcpcryptd's role, the TLS design's
    "kernel proxy"), whose per-segment work runs in softirq and syscall context and never
    waits behind user processes for a CPU. As an ordinary process on a busy machine, every
    wake-up of the proxy (two per segment that crosses a host) can wait milliseconds in the
    run queue. The delay line runs at real-time priority for the same reason; the proxy takes
    a lower one. Children (none) would not inherit it (SCHED_RESET_ON_FORK)."""
    if priority == 0:
        return "SCHED_OTHER (not requested)"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK,
                              os.sched_param(priority))
    except OSError as exc:
        return f"SCHED_OTHER (SCHED_FIFO: {exc.strerror})"
    return f"SCHED_FIFO:{priority}"
