"""Link shaping: one description (topologies/shapes.py), two backends.

A ``LinkShape`` says what one link does to packets in each direction: one-way
delay, jitter, loss, rate and queue limit. It is realised either by the kernel's
netem qdisc (where the kernel has sch_netem, detected, never assumed) or by the
userspace delay line (testbed/net/delayline.py) running in a transparent L2
namespace spliced into the link. Both backends report which one ran and the
delay they actually applied.

The command builders here are pure (they return argv lists) so they are tested
without root; testbed/net/network.py executes them and raises on failure.
"""

from __future__ import annotations

import functools
import shutil
import subprocess

from testbed.errors import ConfigError, KernelFeatureError
from topologies.shapes import (
    LinkShape,
    LinkSpec,
    PathShape,
    parse_loss,
    parse_rate_bps,
    parse_time_ms,
)

__all__ = ["BACKENDS", "LinkShape", "LinkSpec", "PathShape", "choose_backend", "netem_available",
           "netem_command", "parse_loss", "parse_rate_bps", "parse_time_ms"]

BACKENDS = ("auto", "netem", "userspace")


def netem_command(intf: str, shape: LinkShape) -> list[str]:
    """tc argv installing ``shape`` as a root netem qdisc on ``intf``'s egress."""
    argv = ["tc", "qdisc", "replace", "dev", intf, "root", "netem"]
    if shape.queue_packets is not None:
        argv += ["limit", str(shape.queue_packets)]
    if shape.delay_ms or shape.jitter_ms:
        argv += ["delay", f"{shape.delay_ms:g}ms"]
        if shape.jitter_ms:
            argv += [f"{shape.jitter_ms:g}ms"]
    if shape.loss:
        argv += ["loss", f"{shape.loss * 100:g}%"]
    if shape.rate_bps:
        argv += ["rate", f"{shape.rate_bps}bit"]
    return argv


@functools.cache
def netem_available() -> bool:
    """True when the kernel has sch_netem, tested in a throw-away namespace."""
    if shutil.which("unshare") is None or shutil.which("tc") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--net", "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.returncode == 0


def choose_backend(requested: str) -> str:
    """Resolve 'auto' to the backend this kernel supports; refuse impossible choices."""
    if requested not in BACKENDS:
        raise ConfigError(f"unknown link backend {requested!r}", f"choose from {BACKENDS}")
    if requested == "userspace":
        return "userspace"
    if netem_available():
        return "netem"
    if requested == "netem":
        raise KernelFeatureError(
            "this kernel has no sch_netem qdisc", "use --link-backend userspace (or auto)"
        )
    return "userspace"
