"""Zero a connection's conntrack packet counters when a new connection reuses its 4-tuple.

Why: the hook's rules (rules.py) queue the first few packets of each connection by
conntrack's per-direction packet counters (connbytes). Linux keeps a reset connection's
entry for a while (CLOSE state, 10 s); a new SYN on the same 4-tuple reopens that entry
instead of replacing it when the last RST came from the other direction and no FIN was seen
(nf_conntrack_proto_tcp.c), and the counters carry on from the old connection. Past the
windows, neither hook would see the new connection's first ACK segment: A could not add
``45 02`` to its third segment and B could not judge it (RFC 8547 §4.6 rule 1).

So for every new connection the hook follows (an announced SYN leaving, or a SYN reaching a
listener, before it is accepted), it sends ctnetlink ``IPCTNL_MSG_CT_GET_CTRZERO`` for the
original-direction tuple: "read and zero the counters". A brand-new connection's entry is
not confirmed yet while its SYN sits in the queue, so the kernel answers ENOENT and nothing
changes; a reopened entry gets counters that start again from zero. This costs one netlink
round trip per followed SYN on the packet path; ``stats()`` reports its mean.

The message builder and the reply parser are pure (byte-level tests); ``CounterZeroer``
owns the netlink socket (root, the host's network namespace).
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import time
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET_CTRZERO = 3
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
NLA_F_NESTED = 0x8000
CTA_TUPLE_ORIG = 1
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, seq, pid (host order)
_NFGENMSG = struct.Struct("=BBH")  # family, version, res_id (network order, here 0)
_NLATTR = struct.Struct("=HH")

Tuple4 = tuple[str, int, str, int]  # src ip, src port, dst ip, dst port (original direction)


class CtNetlinkError(Exception):
    """A malformed reply from the kernel."""


def _attr(kind: int, payload: bytes, nested: bool = False) -> bytes:
    body = _NLATTR.pack(_NLATTR.size + len(payload), kind | (NLA_F_NESTED if nested else 0))
    return body + payload + bytes(-len(payload) % 4)


def zero_request(tup: Tuple4, seq: int) -> bytes:
    """The GET_CTRZERO request for one IPv4 TCP tuple (original direction)."""
    src, sport, dst, dport = tup
    ip = _attr(CTA_IP_V4_SRC, socket.inet_aton(src)) + _attr(CTA_IP_V4_DST, socket.inet_aton(dst))
    proto = (_attr(CTA_PROTO_NUM, bytes((socket.IPPROTO_TCP,)))
             + _attr(CTA_PROTO_SRC_PORT, struct.pack("!H", sport))
             + _attr(CTA_PROTO_DST_PORT, struct.pack("!H", dport)))
    orig = _attr(CTA_TUPLE_IP, ip, nested=True) + _attr(CTA_TUPLE_PROTO, proto, nested=True)
    payload = _NFGENMSG.pack(socket.AF_INET, 0, 0) + _attr(CTA_TUPLE_ORIG, orig, nested=True)
    kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET_CTRZERO
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), kind, NLM_F_REQUEST | NLM_F_ACK,
                          seq, 0) + payload


def reply_status(data: bytes, seq: int) -> int | None:
    """Walk the netlink messages of one ``recv``: the errno of the ack for ``seq`` (0 = done,
    the entry existed and its counters are zero now), or None if it is not in ``data``."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, got_seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            raise CtNetlinkError(f"netlink message of length {length} at {offset} is truncated")
        if got_seq == seq and kind == NLMSG_ERROR:
            if length < _NLMSGHDR.size + 4:
                raise CtNetlinkError("NLMSG_ERROR without its error code")
            (code,) = struct.unpack_from("=i", data, offset + _NLMSGHDR.size)
            return -int(code)
        offset += (length + 3) & ~3
    return None


@dataclass
class CounterZeroer:
    """Zero counters of reopened conntrack entries; counts what happened (see stats)."""

    timeout: float = 0.5
    counts: dict[str, int] = field(default_factory=lambda: {"zeroed": 0, "absent": 0,
                                                             "failed": 0})
    _sock: socket.socket | None = None
    _seq: int = 0
    _elapsed_ns: int = 0

    def stats(self) -> dict[str, float]:
        """The counts, and the mean time of one request in microseconds."""
        calls = sum(self.counts.values())
        mean = self._elapsed_ns / calls / 1e3 if calls else 0.0
        return {**self.counts, "mean_us": round(mean, 1)}

    def zero(self, tup: Tuple4) -> bool:
        """True when an existing entry's counters were zeroed; never raises."""
        start = time.perf_counter_ns()
        try:
            return self._zero(tup)
        finally:
            self._elapsed_ns += time.perf_counter_ns() - start

    def _zero(self, tup: Tuple4) -> bool:
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
                self._sock.settimeout(self.timeout)
            self._seq = (self._seq + 1) & 0xFFFFFFFF
            self._sock.send(zero_request(tup, self._seq))
            status = None
            while status is None:
                status = reply_status(self._sock.recv(65536), self._seq)
        except (OSError, CtNetlinkError) as exc:
            self.counts["failed"] += 1
            logger.warning("conntrack counters of %s not zeroed: %s", tup, exc)
            self.close()  # a fresh socket next time (no stale replies to skip)
            return False
        if status == 0:
            self.counts["zeroed"] += 1
            return True
        if status == errno.ENOENT:
            self.counts["absent"] += 1
            return False
        self.counts["failed"] += 1
        logger.warning("conntrack counters of %s not zeroed: %s", tup, errno.errorcode.get(
            status, status))
        return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
