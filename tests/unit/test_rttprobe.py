"""The RTT probe's two clocks (testbed/net/rttprobe.py) on loopback: every answered probe has a
kernel-clock time, taken before the application woke up, so never after its application time."""

from __future__ import annotations

import os
import socket

import pytest

from testbed.net import rttprobe


def test_connect_times_both_clocks() -> None:
    with socket.create_server(("127.0.0.1", 0), backlog=16) as listener:
        app, kernel = rttprobe.connect_times("127.0.0.1", listener.getsockname()[1], 5, 0.0)
    assert len(app) == len(kernel) == 5
    # tcpi_rtt is whole microseconds, measured inside connect(): at most the call's duration
    assert all(0 < k <= a + 0.001 for a, k in zip(app, kernel, strict=True))


@pytest.mark.skipif(os.geteuid() != 0, reason="a raw ICMP socket needs root")
def test_icmp_times_both_clocks() -> None:
    app, kernel = rttprobe.icmp_times("127.0.0.1", 5, 0.0)
    assert len(app) == len(kernel) == 5
    assert all(0 < k <= a + 0.001 for a, k in zip(app, kernel, strict=True))


def test_missing_receive_timestamp_is_an_error() -> None:
    with pytest.raises(OSError, match="SO_TIMESTAMPNS"):
        rttprobe._received([])
