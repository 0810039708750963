"""The UDP packet generator of `tcpinc bench emulator` (testbed/net/bench_udp.py) on loopback."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from testbed.net import bench_udp


def test_every_datagram_is_its_own_64_byte_packet() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sink.bind(("127.0.0.1", 0))
        result = bench_udp.send("127.0.0.1", sink.getsockname()[1], pps=2000, seconds=0.2,
                                burst=8)
        sink.settimeout(0.5)
        sizes = []
        while len(sizes) < result["packets"]:
            sizes.append(len(sink.recv(65536)))
    # bursts of 8 handed over at once, cut into separate datagrams by the kernel
    assert result["packets"] % 8 == 0 and result["packets"] >= 8 and result["failed_calls"] == 0
    assert result["segmented"] is True and result["bytes"] == 64 * result["packets"]
    assert sizes == [64] * result["packets"]


def test_one_datagram_per_call_without_segmentation() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        result = bench_udp.send("127.0.0.1", sink.getsockname()[1], pps=500, seconds=0.05,
                                size=100, burst=1)
        sink.settimeout(0.5)
        assert [len(sink.recv(65536)) for _ in range(result["packets"])] == \
            [100] * result["packets"]
    assert result["segmented"] is False


@pytest.mark.parametrize("args", [["--burst", "65"], ["--burst", "0"], ["--size", "0"],
                                  ["--pps", "0"]])
def test_bad_arguments_are_one_line_exit_2(args: list[str]) -> None:
    argv = {"--pps": "1000", "--seconds": "0.1", **dict(zip(args[::2], args[1::2], strict=True))}
    proc = subprocess.run([sys.executable, "-m", "testbed.net.bench_udp", "--dst", "127.0.0.1",
                           *[x for kv in argv.items() for x in kv]],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("bench_udp: error:") and proc.stderr.count("\n") == 1
