"""A 64-byte UDP packet generator for `tcpinc bench emulator`: `python -m testbed.net.bench_udp`.

iperf3 sends one datagram per system call, which on a small machine tops out at a few tens of
thousands of packets per second: the figure then measures the sender, not the link. This sender
hands the kernel up to 64 datagrams per call (UDP generic segmentation offload, ``UDP_SEGMENT``,
Linux 4.18): on an interface with segmentation off (the testbed's wire-like frames) the kernel
cuts them into separate packets before they leave the host, so the link sees ordinary 64-byte
datagrams, paced in bursts of at most ``--burst`` packets to keep the offered rate.

Runs in the sending host; prints one JSON object: packets and bytes handed to the kernel, the
seconds it took, and the send calls that failed (ENOBUFS and the like: counted, not retried).
The receiving side is counted on its interface (``rx_packets``), which is what the link delivered.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time

UDP_SEGMENT = 103  # include/uapi/linux/udp.h (socket level SOL_UDP)
SOL_UDP = 17
MAX_BURST = 64  # UDP_MAX_SEGMENTS is 128; 64 keeps a burst short at the offered rates


def send(dst: str, port: int, pps: float, seconds: float, size: int = 64,
         burst: int = MAX_BURST) -> dict[str, float | int]:
    """Send ``pps`` datagrams of ``size`` payload bytes per second for ``seconds``."""
    if not 1 <= burst <= MAX_BURST or size < 1 or pps <= 0 or seconds <= 0:
        raise ValueError("need 1 <= burst <= 64, size >= 1, pps > 0 and seconds > 0")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.connect((dst, port))
    segmented = burst > 1
    if segmented:
        sock.setsockopt(SOL_UDP, UDP_SEGMENT, size)
    payload = bytes(size * burst)
    sent = failed = 0
    interval = burst / pps
    start = time.monotonic()
    end = start + seconds
    next_at = start
    try:
        while (now := time.monotonic()) < end:
            if now < next_at:
                time.sleep(next_at - now)
                continue
            try:
                sock.send(payload)
                sent += burst
            except OSError:
                failed += 1
            next_at += interval
            if next_at < now - 0.01:  # fell behind by more than 10 ms: do not catch up at once
                next_at = now
    finally:
        sock.close()
    took = time.monotonic() - start
    return {"packets": sent, "bytes": sent * size, "seconds": took, "failed_calls": failed,
            "segmented": segmented}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dst", required=True)
    parser.add_argument("--port", type=int, default=5202)
    parser.add_argument("--pps", type=float, required=True)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--burst", type=int, default=MAX_BURST)
    args = parser.parse_args(argv)
    try:
        result = send(args.dst, args.port, args.pps, args.seconds, args.size, args.burst)
    except ValueError as exc:
        print(f"bench_udp: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
