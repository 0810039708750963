"""Round-trip probes run inside a host: `python -m testbed.net.rttprobe`.

``--mode connect`` times ``connect()`` (SYN out, SYN-ACK in: one RTT) against a
listening port; ``--mode icmp`` times ICMP echo request/reply on a raw socket
with microsecond resolution (ping(8) prints whole milliseconds above 100 ms).

Each probe is timed twice. ``app_ms``: the application's clock, from before the send
to after the call that returns the answer, so it includes the time the kernel took
to wake the probe once the answer arrived (on a VM whose idle vCPU sleeps, 0.1-0.3
ms after an idle RTT: `tcpinc bench wakeup`). ``kernel_ms``: what the network did,
without that wake-up: for ICMP the kernel's receive timestamp of the reply
(SO_TIMESTAMPNS, as ping(8) does) minus the kernel's software transmit timestamp of the
request (SO_TIMESTAMPING, taken by the driver as the frame leaves the interface:
Documentation/networking/timestamping.rst), so the probe's own send path (a Python call
and the kernel's ICMP output, 30-40 us after an idle gap) is not counted; where the
interface gives no transmit timestamp, the wall clock just before the send (counted in
``wall_sends``); for
TCP the kernel's own RTT sample of the handshake (``tcpi_rtt`` of TCP_INFO right
after ``connect()``: the SYN's send time to the SYN-ACK's processing, in
microseconds, RFC 6298 section 2.2's first measurement).
Prints ``{"app_ms": [...], "kernel_ms": [...], "wall_sends": N}``, one entry per answered
probe; ``wall_sends`` counts the ICMP probes timed from the wall clock (0 for connect).
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
_TIMESPEC = struct.Struct("@qq")
SO_TIMESTAMPNS = 35  # SO_TIMESTAMPNS_OLD: a struct timespec of two 64-bit fields here
SO_TIMESTAMPING = 37  # SO_TIMESTAMPING_OLD; also the cmsg type (SCM_TIMESTAMPING)
# include/uapi/linux/net_tstamp.h: a software transmit timestamp, reported without the packet
SOF_TIMESTAMPING_TX_SOFTWARE = 1 << 1
SOF_TIMESTAMPING_SOFTWARE = 1 << 4
SOF_TIMESTAMPING_OPT_TSONLY = 1 << 11
MSG_ERRQUEUE = 0x2000
# A reply carries both receive stamps: SO_TIMESTAMPNS (a timespec) and, since SO_TIMESTAMPING
# is on with SOF_TIMESTAMPING_SOFTWARE, SCM_TIMESTAMPING (struct scm_timestamping, three).
_REPLY_CMSG_SPACE = socket.CMSG_SPACE(16) + socket.CMSG_SPACE(48)
TCP_INFO_RTT_OFFSET = 68  # struct tcp_info: 8 bytes of u8 fields, then tcpi_rto... tcpi_rtt (us)


def connect_times(host: str, port: int, count: int,
                  gap_s: float) -> tuple[list[float], list[float]]:
    app, kernel = [], []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(5.0)
        start = time.perf_counter()
        sock.connect((host, port))
        app.append((time.perf_counter() - start) * 1e3)
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_RTT_OFFSET + 4)
        kernel.append(struct.unpack_from("I", info, TCP_INFO_RTT_OFFSET)[0] / 1e3)
        sock.close()
        time.sleep(gap_s)
    return app, kernel


def icmp_times(host: str, count: int, gap_s: float,
               timeout_s: float = 2.0) -> tuple[list[float], list[float], int]:
    """Echo requests one at a time; each reply is matched by identifier and sequence.
    Returns application and kernel times and how many kernel times began at the wall clock
    (no transmit timestamp)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, SOF_TIMESTAMPING_TX_SOFTWARE
                    | SOF_TIMESTAMPING_SOFTWARE | SOF_TIMESTAMPING_OPT_TSONLY)
    sock.setblocking(False)
    ident = os.getpid() & 0xFFFF
    app: list[float] = []
    kernel: list[float] = []
    wall_sends = 0
    try:
        for seq in range(count):
            body = _ICMP_HDR.pack(8, 0, 0, ident, seq) + b"tcpinc-rtt-probe"
            packet = body[:2] + struct.pack("!H", internet_checksum(body)) + body[4:]
            _drain_errqueue(sock)
            wall = time.time_ns()
            start = time.perf_counter()
            sock.sendto(packet, (host, 0))
            # The driver stamps the frame inside sendto() (veth transmits synchronously).
            sent = _drain_errqueue(sock)
            if sent is None:
                sent = wall
                wall_sends += 1
            deadline = start + timeout_s
            while (left := deadline - time.perf_counter()) > 0:
                if not select.select([sock], [], [], left)[0]:
                    break
                try:
                    data, anc, _flags, _addr = sock.recvmsg(2048, _REPLY_CMSG_SPACE)
                except BlockingIOError:  # woken by the error queue, not a reply
                    _drain_errqueue(sock)
                    continue
                ihl = ipv4_header(data)[0]  # a raw ICMP socket reads the IP header too
                if len(data) < ihl + _ICMP_HDR.size:
                    continue
                kind, _, _, rid, rseq = _ICMP_HDR.unpack_from(data, ihl)
                if kind == 0 and rid == ident and rseq == seq:
                    app.append((time.perf_counter() - start) * 1e3)
                    kernel.append((_received(anc) - sent) / 1e6)
                    break
            time.sleep(gap_s)
    finally:
        sock.close()
    return app, kernel, wall_sends


def _drain_errqueue(sock: socket.socket) -> int | None:
    """Empty the socket's error queue; the last software transmit timestamp in it (wall
    clock, ns), or None."""
    stamp = None
    while True:
        try:
            # SCM_TIMESTAMPING, then the sock_extended_err (IP_RECVERR) saying what it was
            _data, anc, _flags, _addr = sock.recvmsg(
                64, socket.CMSG_SPACE(48) + socket.CMSG_SPACE(64), MSG_ERRQUEUE)
        except BlockingIOError:
            return stamp
        for level, kind, cdata in anc:
            # struct scm_timestamping: three timespecs, the software one first
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING and len(cdata) >= 16:
                sec, nsec = _TIMESPEC.unpack_from(cdata)
                if sec or nsec:
                    stamp = sec * 1_000_000_000 + nsec


def _received(anc: list[tuple[int, int, bytes]]) -> int:
    """The kernel's receive time (wall clock, ns) from SO_TIMESTAMPNS."""
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = _TIMESPEC.unpack_from(data)
            return int(sec) * 1_000_000_000 + int(nsec)
    raise OSError("an ICMP reply came without its kernel receive timestamp (SO_TIMESTAMPNS)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=["connect", "icmp"], default="connect")
    parser.add_argument("--server", required=True)
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--gap-ms", type=float, default=2.0)
    args = parser.parse_args(argv)
    gap = args.gap_ms / 1e3
    wall_sends = 0
    if args.mode == "icmp":
        app, kernel, wall_sends = icmp_times(args.server, args.count, gap)
    else:
        app, kernel = connect_times(args.server, args.port, args.count, gap)
    print(json.dumps({"app_ms": app, "kernel_ms": kernel, "wall_sends": wall_sends}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
