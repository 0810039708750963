"""Round-trip probes run inside a host: `python -m testbed.net.rttprobe`.

``--mode connect`` times ``connect()`` (SYN out, SYN-ACK in: one RTT) against a
listening port; ``--mode icmp`` times ICMP echo request/reply on a raw socket
with microsecond resolution (ping(8) prints whole milliseconds above 100 ms).
Prints the times in milliseconds as one JSON list; lost probes are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import sys
import time

from testbed.packet import internet_checksum, ipv4_header

_ICMP_HDR = struct.Struct("!BBHHH")


def connect_times(host: str, port: int, count: int, gap_s: float) -> list[float]:
    out = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(5.0)
        start = time.perf_counter()
        sock.connect((host, port))
        out.append((time.perf_counter() - start) * 1e3)
        sock.close()
        time.sleep(gap_s)
    return out


def icmp_times(host: str, count: int, gap_s: float, timeout_s: float = 2.0) -> list[float]:
    """Echo requests one at a time; each reply is matched by identifier and sequence."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    out = []
    try:
        for seq in range(count):
            body = _ICMP_HDR.pack(8, 0, 0, ident, seq) + b"tcpinc-rtt-probe"
            packet = body[:2] + struct.pack("!H", internet_checksum(body)) + body[4:]
            start = time.perf_counter()
            sock.sendto(packet, (host, 0))
            deadline = start + timeout_s
            while (left := deadline - time.perf_counter()) > 0:
                if not select.select([sock], [], [], left)[0]:
                    break
                data = sock.recv(2048)
                ihl = ipv4_header(data)[0]  # a raw ICMP socket reads the IP header too
                if len(data) < ihl + _ICMP_HDR.size:
                    continue
                kind, _, _, rid, rseq = _ICMP_HDR.unpack_from(data, ihl)
                if kind == 0 and rid == ident and rseq == seq:
                    out.append((time.perf_counter() - start) * 1e3)
                    break
            time.sleep(gap_s)
    finally:
        sock.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=["connect", "icmp"], default="connect")
    parser.add_argument("--server", required=True)
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--gap-ms", type=float, default=2.0)
    args = parser.parse_args(argv)
    gap = args.gap_ms / 1e3
    if args.mode == "icmp":
        times = icmp_times(args.server, args.count, gap)
    else:
        times = connect_times(args.server, args.port, args.count, gap)
    print(json.dumps(times))
    return 0


if __name__ == "__main__":
    sys.exit(main())
