"""The RTT probe's two clocks (testbed/net/rttprobe.py) on loopback: every answered probe has a
kernel-clock time, taken before the application woke up, so never after its application time;
an ICMP probe's kernel time starts at the interface's transmit timestamp."""

from __future__ import annotations

import os
import socket
import struct

import pytest

from testbed.net import rttprobe


def test_connect_times_both_clocks() -> None:
    with socket.create_server(("127.0.0.1", 0), backlog=16) as listener:
        app, kernel = rttprobe.connect_times("127.0.0.1", listener.getsockname()[1], 5, 0.0)
    assert len(app) == len(kernel) == 5
    # tcpi_rtt is whole microseconds, measured inside connect(): at most the call's duration
    assert all(0 < k <= a + 0.001 for a, k in zip(app, kernel, strict=True))


@pytest.mark.skipif(os.geteuid() != 0, reason="a raw ICMP socket needs root")
def test_icmp_times_both_clocks_from_the_transmit_timestamp() -> None:
    app, kernel, wall_sends = rttprobe.icmp_times("127.0.0.1", 5, 0.0)
    assert len(app) == len(kernel) == 5
    assert wall_sends == 0  # loopback, like veth, stamps the frame it transmits
    assert all(0 < k <= a for a, k in zip(app, kernel, strict=True))


def test_an_empty_error_queue_gives_no_transmit_timestamp() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        assert rttprobe._drain_errqueue(sock) is None


def test_a_udp_send_on_loopback_is_stamped_in_the_error_queue() -> None:
    """The same socket options on an unprivileged socket: the stamp is the send's wall clock."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        tx.setsockopt(socket.SOL_SOCKET, rttprobe.SO_TIMESTAMPING,
                      rttprobe.SOF_TIMESTAMPING_TX_SOFTWARE | rttprobe.SOF_TIMESTAMPING_SOFTWARE
                      | rttprobe.SOF_TIMESTAMPING_OPT_TSONLY)
        tx.setblocking(False)
        before = rttprobe.time.time_ns()
        tx.sendto(b"x", rx.getsockname())
        stamp = rttprobe._drain_errqueue(tx)
        after = rttprobe.time.time_ns()
    assert stamp is not None and before <= stamp <= after


def test_receive_timestamp_in_nanoseconds() -> None:
    anc = [(socket.SOL_SOCKET, rttprobe.SO_TIMESTAMPNS, struct.pack("@qq", 1_700_000_000, 5))]
    assert rttprobe._received(anc) == 1_700_000_000_000_000_005


def test_missing_receive_timestamp_is_an_error() -> None:
    with pytest.raises(OSError, match="SO_TIMESTAMPNS"):
        rttprobe._received([])
