"""ctnetlink GET_CTRZERO: the request bytes and the reply walk (testbed/eno/ctzero.py)."""

from __future__ import annotations

import errno
import struct

import pytest

from testbed.eno.ctzero import CounterZeroer, CtNetlinkError, reply_status, zero_request

TUPLE = ("10.0.1.1", 40000, "10.0.2.2", 5000)
# nlmsghdr (length 72, type CTNETLINK << 8 | GET_CTRZERO, REQUEST|ACK, seq 7, pid 0; host
# byte order), nfgenmsg (AF_INET, v0, res_id 0), then CTA_TUPLE_ORIG nested: CTA_TUPLE_IP
# (src, dst) and CTA_TUPLE_PROTO (TCP, ports in network order), attributes padded to 4.
REQUEST = bytes.fromhex(
    "48000000" "0301" "0500" "07000000" "00000000"
    "02000000"
    "34000180"
    "14000180" "08000100" "0a000101" "08000200" "0a000202"
    "1c000280" "05000100" "06000000" "06000200" "9c400000" "06000300" "13880000"
)


def nlmsg(kind: int, seq: int, payload: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(payload), kind, 0, seq, 0) + payload


def ack(seq: int, code: int) -> bytes:
    return nlmsg(2, seq, struct.pack("=i", code) + REQUEST[:16])


def test_request_bytes():
    assert zero_request(TUPLE, 7) == REQUEST


@pytest.mark.parametrize("data, status", [
    (ack(7, 0), 0),
    (ack(7, -errno.ENOENT), errno.ENOENT),
    (nlmsg(0x0100, 7, bytes(40)) + ack(7, 0), 0),  # the entry itself first, then the ack
    (ack(6, -errno.ENOENT), None),  # an older request's answer
    (b"", None),
])
def test_reply_status(data, status):
    assert reply_status(data, 7) == status


@pytest.mark.parametrize("data", [
    ack(7, 0)[:-4],  # cut short
    struct.pack("=IHHII", 8, 2, 0, 7, 0),  # length below the header
    nlmsg(2, 7, b""),  # an error message without its code
])
def test_malformed_replies_raise(data):
    with pytest.raises(CtNetlinkError):
        reply_status(data, 7)


def test_zeroer_never_raises_and_counts(monkeypatch):
    """Without a usable netlink socket (monkeypatched to fail) the zeroer reports False."""
    import socket

    def no_socket(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(socket, "socket", no_socket)
    zeroer = CounterZeroer()
    assert zeroer.zero(TUPLE) is False
    assert zeroer.counts == {"zeroed": 0, "absent": 0, "failed": 1}
    stats = zeroer.stats()
    assert stats["failed"] == 1 and stats["mean_us"] > 0
