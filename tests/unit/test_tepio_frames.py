"""Frames sized to the congestion window (testbed/tepio.py ``FrameSizer``): what a receiving
TEP can hand over from the first segments of a response, exactly, for both TEPs."""

from __future__ import annotations

import socket

import pytest

from testbed.tepio import IDLE_RESTART_S, SMALL_FRAMES_FOR, FrameSizer, TepDriver
from testbed.teps.base import DataReceived, TepCore
from tests.unit.test_transparent import tep_cores

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 16384\r\n\r\n" + bytes(16384)


def test_frame_sizer_cuts_one_segment_frames_after_a_start_and_an_idle_time() -> None:
    sizer = FrameSizer(small=1000)
    data = memoryview(bytes(range(256)) * 10)  # 2560 bytes
    assert [len(c) for c in sizer.chunks(data, now=5.0)] == [1000, 1000, 560]
    assert sizer.left == SMALL_FRAMES_FOR - 2560
    # The small-frame budget runs out inside a read: the rest goes whole.
    sizer.left = 1500
    assert [len(c) for c in sizer.chunks(data, now=5.1)] == [1000, 500, 1060]
    assert sizer.left == 0
    assert [len(c) for c in sizer.chunks(data, now=5.1 + IDLE_RESTART_S / 2)] == [2560]
    # Idle for longer than an RTO: the congestion window may be the initial one again.
    assert [len(c) for c in sizer.chunks(data, now=5.2 + 2 * IDLE_RESTART_S)] == [
        1000, 1000, 560]
    assert b"".join(sizer.chunks(data, now=9.0)) == bytes(data)


def _delivered_from(core: TepCore, wire: bytes, limit: int) -> bytes:
    """What ``core`` hands over from the first ``limit`` bytes of ``wire``, fed a segment's
    worth at a time."""
    got = bytearray()
    for start in range(0, min(limit, len(wire)), 1448):
        events = core.receive_data(wire[start:min(start + 1448, limit)], 0.0)
        got += b"".join(e.data for e in events if isinstance(e, DataReceived))
    return bytes(got)


@pytest.mark.parametrize("tep", ["tcpcrypt", "tls"])
def test_first_frames_fit_the_initial_window(tep: str) -> None:
    """A response read in one piece (headers and a 16 KiB body): cut by the frame sizer, the
    peer delivers its first bytes from the first segment; sealed whole, nothing of it
    arrives within the initial window of 10 segments (RFC 6928) and the application waits
    for the next flight."""
    response = RESPONSE
    window = 10 * 1448
    a, b = tep_cores(tep)
    for piece in FrameSizer(small=1448 - 64).chunks(memoryview(response), now=0.0):
        a.send_data(piece)  # type: ignore[arg-type]  # the cores take buffers
    first = _delivered_from(b, a.data_to_send(), 1448)
    assert first and response.startswith(first)
    a, b = tep_cores(tep)
    a.send_data(response)
    assert _delivered_from(b, a.data_to_send(), window) == b""


@pytest.mark.parametrize("tep", ["tcpcrypt", "tls"])
def test_a_driver_on_a_tcp_socket_cuts_its_first_sends(tep: str) -> None:
    """TepDriver.send on a connection whose MSS is 1448 (clamped with TCP_MAXSEG before
    connect): the first segment's worth of what it writes already delivers bytes at the
    peer; on a unix socket pair (no congestion window) the core gets the send whole."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1448)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
    with client, server:
        mss = client.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
        assert mss <= 1448
        a, b = tep_cores(tep)
        driver = TepDriver(client, a)
        driver.started = True  # the cores' handshake ran in memory
        driver.send(RESPONSE)
        assert driver._frames is not None and driver._frames.small == mss - 64
        wire = bytearray()
        server.settimeout(5)
        while len(wire) < len(RESPONSE):
            wire += server.recv(65536)
        first = _delivered_from(b, bytes(wire), mss)
        assert first and RESPONSE.startswith(first)
    left, right = socket.socketpair()
    with left, right:
        assert FrameSizer.for_socket(left).chunks(memoryview(RESPONSE), 0.0) == [
            memoryview(RESPONSE)]
