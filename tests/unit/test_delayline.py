"""Tests of the userspace delay line.

The pure core (shape validation, virtio-net header math, DirectionScheduler, Reservoir) is tested
with injected time and RNGs and needs no privileges. The ``emulation`` tests build their own
client -- shaper -- server namespaces, run ``python -m testbed.net.delayline`` in the shaper and
measure ICMP echo RTT and a TCP transfer through it.
"""

from __future__ import annotations

import errno
import json
import os
import random
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from testbed.errors import ConfigError
from testbed.net import delayline
from testbed.net.delayline_sched import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP_L4,
    VNET_HDR_LEN,
    DirectionScheduler,
    DropReason,
    Reservoir,
    Shape,
    SpinBudget,
    VnetHeader,
    segment_header_bytes,
    wire_bytes,
)
from tests.helpers import assert_within

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ScriptedRandom(random.Random):
    """An RNG whose uniform()/random() return scripted values, to test exact arithmetic."""

    def __init__(self, values: list[float]) -> None:
        super().__init__(0)
        self._values = list(values)

    def random(self) -> float:
        return self._values.pop(0)

    def uniform(self, a: float, b: float) -> float:
        return self._values.pop(0)


def scheduler(rng_values: list[float] | None = None, **shape: Any) -> DirectionScheduler:
    jitter = ScriptedRandom(rng_values or [])
    return DirectionScheduler(Shape(**shape), random.Random(1), jitter)


# --- shape validation ------------------------------------------------------------------------


def test_shape_defaults_and_json_normalisation() -> None:
    shape = Shape.from_json(
        '{"delay_ms": 10, "jitter_ms": 0.5, "loss": 0, "rate_bps": 1e7, '
        '"queue_packets": 100, "queue_bytes": null}'
    )
    assert shape == Shape(delay_ms=10.0, jitter_ms=0.5, rate_bps=10_000_000, queue_packets=100)
    assert isinstance(shape.delay_ms, float) and isinstance(shape.rate_bps, int)
    assert Shape.from_json("{}") == Shape()
    assert Shape.from_mapping(shape.to_dict()) == shape


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[1, 2]",
        '{"delay_ms": -1}',
        '{"jitter_ms": -0.1}',
        '{"loss": 1.5}',
        '{"loss": -0.01}',
        '{"rate_bps": 0}',
        '{"rate_bps": -8000}',
        '{"rate_bps": 1.5}',
        '{"queue_packets": 0}',
        '{"delay_ms": true}',
        '{"delay_ms": "10"}',
        '{"delay_ms": NaN}',
        '{"delay_ms": Infinity}',
        '{"delay": 10}',
    ],
)
def test_shape_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        Shape.from_json(text)


def test_queue_limit_without_rate_is_a_visible_warning() -> None:
    assert Shape(queue_packets=100).warnings()
    assert not Shape(rate_bps=10**6, queue_packets=100).warnings()


# --- scheduling ------------------------------------------------------------------------------


def test_constant_delay() -> None:
    s = scheduler(delay_ms=10.0)
    assert s.admit(1.0, 100, 100) == pytest.approx(1.010)
    assert s.admit(1.5, 1500, 1500) == pytest.approx(1.510)
    assert s.last_drop is None and s.admitted == 2


def test_zero_delay_is_immediate() -> None:
    assert scheduler().admit(3.0, 60, 60) == 3.0


def test_jitter_keeps_fifo_order() -> None:
    # Second frame draws -4 ms: raw due 1.0011 + 0.006 = 1.0071 < 1.015, so it waits for the first.
    s = scheduler([0.005, -0.004, 0.0], delay_ms=10.0, jitter_ms=5.0)
    first = s.admit(1.0000, 100, 100)
    second = s.admit(1.0011, 100, 100)
    third = s.admit(1.0200, 100, 100)
    assert first == pytest.approx(1.015)
    assert second == pytest.approx(1.015)
    assert third == pytest.approx(1.030)


def test_jitter_random_stream_is_ordered_bounded_and_spread() -> None:
    s = DirectionScheduler.seeded(Shape(delay_ms=10.0, jitter_ms=3.0), seed=7, direction=0)
    dues = [s.admit(i * 1e-3, 100, 100) for i in range(5000)]
    assert all(d is not None for d in dues)
    times = cast(list[float], dues)
    assert times == sorted(times)
    assert all(t >= i * 1e-3 + 0.007 - 1e-12 for i, t in enumerate(times))
    extra = [t - i * 1e-3 for i, t in enumerate(times)]
    assert max(extra) <= 0.013 + 1e-12 and min(extra) < 0.0075  # jitter really varies


def test_jitter_larger_than_delay_is_clipped_at_zero() -> None:
    s = scheduler([-0.005], delay_ms=1.0, jitter_ms=5.0)
    assert s.admit(2.0, 100, 100) == 2.0


def test_rate_serialization_timing() -> None:
    # 8 Mbit/s = one byte per microsecond: a 1000-byte frame takes 1 ms on the wire.
    s = scheduler(delay_ms=10.0, rate_bps=8_000_000)
    dues = [s.admit(0.0, 1000, 1000) for _ in range(3)]
    assert dues == pytest.approx([0.011, 0.012, 0.013])
    assert s.backlog_packets == 3 and s.backlog_bytes == 3000
    # After an idle gap the serializer starts at the frame's arrival, not at busy_until.
    assert s.admit(1.0, 500, 500) == pytest.approx(1.0 + 0.0005 + 0.010)
    assert s.backlog_packets == 1


def test_rate_uses_wire_bytes_not_frame_length() -> None:
    # A GSO super-frame of 10 x 1514 B on the wire is 15140 B even though it is read as 14546 B.
    s = scheduler(rate_bps=8_000_000)
    assert s.admit(0.0, 14546, 15140) == pytest.approx(0.015140)


def test_queue_packets_drop_tail() -> None:
    s = scheduler(rate_bps=8_000_000, queue_packets=3)
    results = [s.admit(0.0, 1000, 1000) for _ in range(5)]
    assert results[:3] == pytest.approx([0.001, 0.002, 0.003])
    assert results[3:] == [None, None]
    assert s.last_drop is DropReason.QUEUE and s.dropped_queue == 2
    # Once the first frame is serialized there is room again: it queues behind the other two.
    assert s.admit(0.0015, 1000, 1000) == pytest.approx(0.004)


def test_queue_bytes_drop_tail_and_oversized_frame_at_empty_queue() -> None:
    s = scheduler(rate_bps=8_000_000, queue_bytes=2500)
    assert s.admit(0.0, 1000, 1000) is not None
    assert s.admit(0.0, 1000, 1000) is not None
    assert s.admit(0.0, 1000, 1000) is None  # 2000 + 1000 > 2500
    assert s.admit(0.0, 400, 400) is not None  # 2400 fits
    assert s.dropped_queue == 1
    # A frame bigger than the whole limit still passes when the queue is empty (see docstring).
    big = scheduler(rate_bps=8_000_000, queue_bytes=2500)
    assert big.admit(0.0, 64000, 66000) == pytest.approx(0.066)


def test_queue_packets_count_the_segments_of_a_super_frame() -> None:
    s = scheduler(rate_bps=8_000_000, queue_packets=12)
    assert s.admit(0.0, 14546, 15140, segments=10) is not None
    assert s.backlog_packets == 10
    assert s.admit(0.0, 4434, 4542, segments=3) is None  # 10 + 3 > 12: dropped whole
    assert s.admit(0.0, 2962, 3028, segments=2) is not None  # 10 + 2 fits
    assert s.admit(0.015140, 100, 100) is not None  # the super-frame left the queue
    assert s.backlog_packets == 3


def test_no_rate_means_no_queue_limit() -> None:
    s = scheduler(delay_ms=1.0, queue_packets=1)
    assert all(s.admit(0.0, 1500, 1500) is not None for _ in range(100))
    assert s.dropped_queue == 0


def _loss_pattern(seed: int, direction: int, n: int, **shape: Any) -> list[bool]:
    s = DirectionScheduler.seeded(Shape(loss=0.1, **shape), seed=seed, direction=direction)
    return [s.admit(i * 1e-4, 100, 100) is None for i in range(n)]


def test_loss_rate_and_reproducibility() -> None:
    pattern = _loss_pattern(42, 0, 100_000)
    assert_within(sum(pattern) / len(pattern), 0.1, 0.004, what="loss fraction")
    assert pattern == _loss_pattern(42, 0, 100_000)
    assert pattern != _loss_pattern(42, 1, 100_000)  # directions draw independent streams
    # Jitter has its own stream: turning it on must not change which frames are lost.
    assert pattern[:5000] == _loss_pattern(42, 0, 5000, delay_ms=5.0, jitter_ms=2.0)


def test_loss_extremes_and_reason() -> None:
    s = DirectionScheduler.seeded(Shape(loss=1.0), seed=0, direction=0)
    assert all(s.admit(0.0, 100, 100) is None for _ in range(1000))
    assert s.last_drop is DropReason.LOSS and s.dropped_loss == 1000
    t = DirectionScheduler.seeded(Shape(loss=0.0), seed=0, direction=0)
    assert all(t.admit(0.0, 100, 100) is not None for _ in range(1000))


def test_lost_frames_do_not_occupy_the_queue() -> None:
    s = DirectionScheduler(Shape(rate_bps=8_000_000, queue_packets=1, loss=0.5),
                           ScriptedRandom([0.0, 0.9]), ScriptedRandom([]))
    assert s.admit(0.0, 1000, 1000) is None
    assert s.last_drop is DropReason.LOSS
    assert s.admit(0.0, 1000, 1000) == pytest.approx(0.001)


# --- virtio-net header / GSO wire bytes ------------------------------------------------------

ETH = 14
IPV4 = 20
IPV6 = 40
TCP_WITH_TS = 32


def _frame(hdr: VnetHeader, l3: int, l4_header: bytes, payload: int) -> bytes:
    eth = b"\x02" * 12 + (b"\x08\x00" if l3 == IPV4 else b"\x86\xdd")
    return hdr.push() + eth + b"\x45" + b"\x00" * (l3 - 1) + l4_header + b"x" * payload


def _tcp_header(doff_bytes: int) -> bytes:
    head = bytearray(doff_bytes)
    head[12] = (doff_bytes // 4) << 4
    return bytes(head)


def _tso(gso_type: int, l3: int, payload: int, mss: int = 1448, hdr_len: int = 0) -> bytes:
    l4 = ETH + l3
    hdr = VnetHeader(flags=VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type=gso_type,
                     hdr_len=hdr_len or l4 + TCP_WITH_TS, gso_size=mss, csum_start=l4,
                     csum_offset=16)
    return _frame(hdr, l3, _tcp_header(TCP_WITH_TS), payload)


def test_vnet_header_round_trip_and_layout() -> None:
    hdr = VnetHeader(flags=1, gso_type=VIRTIO_NET_HDR_GSO_TCPV4, hdr_len=66, gso_size=1448,
                     csum_start=34, csum_offset=16)
    raw = hdr.push()
    assert raw == bytes([1, 1, 66, 0, 0xA8, 0x05, 34, 0, 16, 0])  # little-endian u16 fields
    assert VnetHeader.pull(raw + b"rest") == hdr
    with pytest.raises(ValueError):
        VnetHeader.pull(raw[:9])


def test_gso_tcpv4_costs_its_segments() -> None:
    frame = _tso(VIRTIO_NET_HDR_GSO_TCPV4, IPV4, payload=10 * 1448)
    assert len(frame) - VNET_HDR_LEN == 66 + 14480
    assert wire_bytes(frame) == (10 * 1514, 10)


def test_gso_last_partial_segment_and_ecn_flag() -> None:
    frame = _tso(VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN, IPV4, payload=3 * 1448 + 100)
    assert wire_bytes(frame) == (66 + 3 * 1448 + 100 + 3 * 66, 4)


def test_gso_tcpv6() -> None:
    frame = _tso(VIRTIO_NET_HDR_GSO_TCPV6, IPV6, payload=4 * 1428, mss=1428)
    assert wire_bytes(frame) == (4 * (ETH + IPV6 + TCP_WITH_TS + 1428), 4)


def test_header_length_from_tcp_data_offset_not_kernel_hint() -> None:
    # On receive the kernel puts skb_headlen() in hdr_len, which may include payload bytes.
    frame = _tso(VIRTIO_NET_HDR_GSO_TCPV4, IPV4, payload=2 * 1448, hdr_len=200)
    assert segment_header_bytes(frame, VnetHeader.pull(frame)) == 66
    assert wire_bytes(frame) == (2 * 1514, 2)


def test_gso_udp_l4() -> None:
    l4 = ETH + IPV4
    hdr = VnetHeader(flags=VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type=VIRTIO_NET_HDR_GSO_UDP_L4,
                     hdr_len=l4 + 8, gso_size=1000, csum_start=l4, csum_offset=6)
    frame = _frame(hdr, IPV4, b"\x00" * 8, 5000)
    assert wire_bytes(frame) == (5 * (l4 + 8 + 1000), 5)


def test_gso_without_partial_checksum_falls_back_to_hdr_len() -> None:
    hdr = VnetHeader(gso_type=VIRTIO_NET_HDR_GSO_TCPV4, hdr_len=66, gso_size=1448)
    frame = _frame(hdr, IPV4, _tcp_header(TCP_WITH_TS), 2 * 1448)
    assert wire_bytes(frame) == (2 * 1514, 2)


def test_plain_and_malformed_frames() -> None:
    plain = _frame(VnetHeader(), IPV4, _tcp_header(20), 1000)
    assert wire_bytes(plain) == (len(plain) - VNET_HDR_LEN, 1)
    no_size = _frame(VnetHeader(gso_type=VIRTIO_NET_HDR_GSO_TCPV4), IPV4, _tcp_header(20), 10)
    assert wire_bytes(no_size) == (len(no_size) - VNET_HDR_LEN, 1)  # gso_size 0: not GSO
    assert wire_bytes(b"\x00" * 4) == (0, 1)
    assert VnetHeader().gso_type == VIRTIO_NET_HDR_GSO_NONE


# --- busy-wait budget ------------------------------------------------------------------------


def test_spin_budget_caps_polling_per_window() -> None:
    budget = SpinBudget(lead=150e-6, fraction=0.1, window=0.1, now=0.0)
    assert budget.lead(0.0) == 150e-6
    budget.charge(0.006)
    assert budget.lead(0.05) == 150e-6  # 6 ms of the 10 ms allowance used
    budget.charge(0.005)
    assert budget.lead(0.06) == 0.0  # allowance exhausted: sleep right up to the deadline
    assert budget.lead(0.1) == 150e-6  # a new window restores it
    assert budget.spent == pytest.approx(0.011)


def test_spin_budget_validation() -> None:
    assert SpinBudget(lead=1e-4, fraction=0.0).lead(0.0) == 0.0  # fraction 0: never poll
    with pytest.raises(ValueError):
        SpinBudget(lead=1e-4, fraction=1.5)


# --- bounded statistics ----------------------------------------------------------------------


def test_reservoir_is_bounded_and_exact_where_it_can_be() -> None:
    r = Reservoir(capacity=1000)
    values = [i / 1000 for i in range(200_000)]
    random.Random(3).shuffle(values)
    for v in values:
        r.add(v)
    summary = r.summary()
    assert r.sample_size == 1000
    assert summary["count"] == 200_000
    assert summary["max"] == pytest.approx(199.999) and summary["min"] == 0.0
    assert summary["mean"] == pytest.approx(99.9995)
    assert_within(cast(float, summary["median"]), 100.0, 10.0, what="sampled median")
    assert_within(cast(float, summary["p99"]), 198.0, 2.0, what="sampled p99")


def test_reservoir_sample_is_uniform_over_time() -> None:
    # Values arrive in increasing order, as delays of a growing queue would: a sample biased
    # towards early or late values would move the median away from the middle.
    r = Reservoir(capacity=2000, rng=random.Random(11))
    for v in range(1_000_000):
        r.add(float(v))
    assert r.sample_size == 2000
    assert_within(cast(float, r.quantile(0.5)), 500_000, 25_000, what="median of 0..1e6")
    assert_within(cast(float, r.quantile(0.1)), 100_000, 15_000, what="p10 of 0..1e6")
    assert_within(cast(float, r.quantile(0.99)), 990_000, 5_000, what="p99 of 0..1e6")


def test_reservoir_empty_and_scaled() -> None:
    assert Reservoir().summary() == {"count": 0, "median": None, "p99": None, "mean": None,
                                     "min": None, "max": None}
    r = Reservoir()
    for v in (0.010, 0.011, 0.012):
        r.add(v)
    assert r.summary(scale=1e3) == {"count": 3, "median": 11.0, "p99": 12.0, "mean": 11.0,
                                    "min": 10.0, "max": 12.0}


# --- IO shell without a network --------------------------------------------------------------


class _FailingSocket:
    def __init__(self, code: int) -> None:
        self.code = code
        self.sent: list[bytes] = []

    def send(self, frame: bytes) -> int:
        if self.code:
            raise OSError(self.code, os.strerror(self.code))
        self.sent.append(frame)
        return len(frame)


def test_send_errors_are_counted_never_silent() -> None:
    tx = _FailingSocket(errno.ENOBUFS)
    d = delayline.Direction("a2b", cast(socket.socket, None), cast(socket.socket, tx),
                            scheduler(), batch=8)
    now = time.monotonic()  # release() re-reads the monotonic clock after each send
    frame = b"\x00" * 74
    d.fifo.extend([(now - 1.0, now - 2, frame), (now - 0.9, now - 2, frame),
                   (now + 1e3, now, frame)])
    d.release(now)
    snap = d.snapshot()
    assert snap["dropped_tx"] == 2 and snap["dropped_tx_errno"] == {"ENOBUFS": 2}
    assert snap["frames"] == 0 and snap["in_flight"] == 1


def test_release_sends_due_frames_in_order_and_records_delay() -> None:
    tx = _FailingSocket(0)
    d = delayline.Direction("a2b", cast(socket.socket, None), cast(socket.socket, tx),
                            scheduler(), batch=8)
    d.fifo.extend([(1.0, 0.99, b"a" * 74), (1.0, 0.995, b"b" * 74)])
    d.release(time.monotonic())
    assert [f[:1] for f in tx.sent] == [b"a", b"b"]
    assert d.frames == 2 and d.bytes == 2 * (74 - VNET_HDR_LEN)
    assert d.delay.count == 2 and d.lateness.count == 2


def test_write_json_atomic(tmp_path: Path) -> None:
    target = tmp_path / "stats.json"
    delayline.write_json_atomic(str(target), {"a": 1})
    delayline.write_json_atomic(str(target), {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]


# --- command line ----------------------------------------------------------------------------

_GOOD = '{"delay_ms": 1}'


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["--if-a", "nosuchif0", "--if-b", "lo", "--a2b", _GOOD, "--b2a", _GOOD],
         "unknown interface"),
        (["--if-a", "lo", "--if-b", "lo", "--a2b", "{bad", "--b2a", _GOOD], "bad shape JSON"),
        (["--if-a", "lo", "--if-b", "lo", "--a2b", '{"delay_ms": -5}', "--b2a", _GOOD],
         "delay_ms"),
        (["--if-a", "lo", "--if-b", "lo", "--a2b", _GOOD, "--b2a", '{"loss": 2}'], "loss"),
        (["--if-a", "lo", "--if-b", "lo", "--a2b", '{"rate_bps": 0}', "--b2a", _GOOD],
         "rate_bps"),
        (["--if-a", "lo", "--if-b", "lo", "--a2b", _GOOD, "--b2a", _GOOD], "same interface"),
        (["--if-a", "lo", "--a2b", _GOOD, "--b2a", _GOOD], "--if-b"),
        (["--if-a", "lo", "--if-b", "lo", "--a2b", _GOOD, "--b2a", _GOOD, "--seed", "x"],
         "--seed"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert delayline.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("delayline: error: ")
    assert fragment in err


def test_stats_directory_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--stats"):
        delayline.parse_config(["--if-a", "lo", "--if-b", "nosuch", "--a2b", _GOOD, "--b2a",
                                _GOOD, "--stats", str(tmp_path / "missing" / "s.json")])


def test_module_entry_point_exit_code() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "testbed.net.delayline", "--if-a", "lo", "--if-b", "lo",
         "--a2b", '{"delay_ms": -1}', "--b2a", _GOOD],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=30, check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1


# --- emulation: real namespaces --------------------------------------------------------------

needs_root_ip = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2")

CLIENT_IP, SERVER_IP = "10.9.0.1", "10.9.0.2"

# Runs in the client namespace. Like ping: wall clock before sendto, kernel receive timestamp
# (SO_TIMESTAMPNS) of the reply, so the prober's own wake-up latency is not counted.
_ICMP_PROBE = r"""
import json, os, socket, struct, sys, time
dst, count, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS
s.settimeout(3.0)
ident = os.getpid() & 0xFFFF
def checksum(b):
    total = sum(struct.unpack(f"!{len(b) // 2}H", b))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
rtts, lost = [], 0
for seq in range(count):
    body = struct.pack("!HH", ident, seq) + bytes(56)
    packet = struct.pack("!BBH", 8, 0, checksum(b"\x08\x00\x00\x00" + body)) + body
    sent = time.time()
    s.sendto(packet, (dst, 0))
    try:
        while True:
            data, anc, _f, _a = s.recvmsg(2048, 64)
            ihl = (data[0] & 0x0F) * 4
            kind, _c, _k, rid, rseq = struct.unpack_from("!BBHHH", data, ihl)
            if kind == 0 and rid == ident and rseq == seq:
                sec, nsec = struct.unpack("@qq", anc[0][2])
                rtts.append((sec + nsec * 1e-9 - sent) * 1e3)
                break
    except TimeoutError:
        lost += 1
    time.sleep(gap)
print(json.dumps({"rtt_ms": rtts, "lost": lost}))
"""

_TCP_SERVER = r"""
import hashlib, socket, sys
listener = socket.create_server((sys.argv[1], int(sys.argv[2])))
listener.settimeout(30)
print("listening", flush=True)
conn, _ = listener.accept()
conn.settimeout(30)
digest, total = hashlib.sha256(), 0
while chunk := conn.recv(1 << 16):
    digest.update(chunk)
    total += len(chunk)
conn.sendall(f"{total} {digest.hexdigest()}".encode())
conn.close()
"""

_TCP_CLIENT = r"""
import hashlib, json, random, socket, sys, time
payload = random.Random(5).randbytes(int(sys.argv[3]))
start = time.monotonic()
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
conn.sendall(payload)
conn.shutdown(socket.SHUT_WR)
reply = conn.recv(1024).decode()
seconds = time.monotonic() - start
expected = f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"
print(json.dumps({"ok": reply == expected, "reply": reply, "seconds": seconds}))
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


def _in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


@dataclass(frozen=True)
class Chain:
    client: str
    shaper: str
    server: str


@contextmanager
def _l2_chain() -> Iterator[Chain]:
    """client 10.9.0.1 -- [shaper: if0, if1, no IP] -- server 10.9.0.2; always torn down."""
    suffix = secrets.token_hex(4)
    chain = Chain(f"dlc-{suffix}", f"dlm-{suffix}", f"dls-{suffix}")
    names = (chain.client, chain.shaper, chain.server)
    created: list[str] = []
    try:
        for ns in names:
            _ip("netns", "add", ns)
            created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            for key in ("all", "default"):  # no RS/MLD/DAD frames on the wire or in the line
                subprocess.run(_in_ns(ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1"),
                               check=True, capture_output=True, timeout=10)
        _ip("link", "add", "eth0", "netns", chain.client, "type", "veth",
            "peer", "name", "if0", "netns", chain.shaper)
        _ip("link", "add", "eth0", "netns", chain.server, "type", "veth",
            "peer", "name", "if1", "netns", chain.shaper)
        for ns, addr in ((chain.client, CLIENT_IP), (chain.server, SERVER_IP)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        for intf in ("if0", "if1"):
            _ip("-n", chain.shaper, "link", "set", intf, "promisc", "on", "up")
        yield chain
    finally:
        failed = []
        for ns in created:
            done = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True,
                                  timeout=10, check=False)
            if done.returncode != 0:
                failed.append(f"{ns}: {done.stderr.strip()}")
        if failed:
            raise RuntimeError(f"namespace cleanup failed: {failed}")


def _wait_line(proc: subprocess.Popen[str], expected: str, timeout: float) -> None:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise AssertionError(f"no {expected!r} line within {timeout}s")
        line = proc.stdout.readline().strip()
    if line != expected:
        err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
        raise AssertionError(f"expected {expected!r}, got {line!r} (rc={proc.poll()}) {err}")


@contextmanager
def _running(argv: list[str], ready: str) -> Iterator[subprocess.Popen[str]]:
    """Start a helper, wait for its ready line, and always stop it by its own pid."""
    proc = subprocess.Popen(argv, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_line(proc, ready, timeout=15)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _delay_line(chain: Chain, stats: Path, a2b: dict[str, Any], b2a: dict[str, Any]) -> list[str]:
    return _in_ns(chain.shaper, sys.executable, "-m", "testbed.net.delayline",
                  "--if-a", "if0", "--if-b", "if1", "--a2b", json.dumps(a2b),
                  "--b2a", json.dumps(b2a), "--seed", "1", "--stats", str(stats))


def _probe(chain: Chain, count: int) -> dict[str, Any]:
    done = subprocess.run(_in_ns(chain.client, sys.executable, "-c", _ICMP_PROBE, SERVER_IP,
                                 str(count), "0.005"),
                          capture_output=True, text=True, timeout=60, check=True)
    return cast(dict[str, Any], json.loads(done.stdout))


def _probe_rtts(chain: Chain, count: int) -> list[float]:
    _probe(chain, 1)  # warm-up: its ARP exchange also crosses the delay line (one extra RTT)
    result = _probe(chain, count)
    assert result["lost"] == 0
    return sorted(result["rtt_ms"])


def _tcp_transfer(chain: Chain, nbytes: int) -> dict[str, Any]:
    server = _in_ns(chain.server, sys.executable, "-c", _TCP_SERVER, SERVER_IP, "5001")
    with _running(server, "listening"):
        done = subprocess.run(_in_ns(chain.client, sys.executable, "-c", _TCP_CLIENT, SERVER_IP,
                                     "5001", str(nbytes)),
                              capture_output=True, text=True, timeout=60, check=True)
    return cast(dict[str, Any], json.loads(done.stdout))


def _stop_and_read_stats(proc: subprocess.Popen[str], stats: Path) -> dict[str, Any]:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    return cast(dict[str, Any], json.loads(stats.read_text()))


@pytest.mark.emulation
@needs_root_ip
def test_delay_line_rtt_and_tcp_in_namespaces(tmp_path: Path) -> None:
    delay_ms = 10.0
    one_way = {"delay_ms": delay_ms, "jitter_ms": 0.0, "loss": 0.0, "rate_bps": None,
               "queue_packets": None, "queue_bytes": None}
    configured_rtt = 2 * delay_ms
    stats = tmp_path / "delayline.json"
    with _l2_chain() as chain, _running(_delay_line(chain, stats, one_way, one_way),
                                        "ready") as line:
        rtts = _probe_rtts(chain, count=100)
        transfer = _tcp_transfer(chain, 4 << 20)
        line.send_signal(signal.SIGUSR1)  # stats while running, without stopping
        deadline = time.monotonic() + 5
        while not stats.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert json.loads(stats.read_text())["final"] is False and line.poll() is None
        report = _stop_and_read_stats(line, stats)

    median = rtts[len(rtts) // 2]
    assert rtts[0] >= configured_rtt, f"RTT below the configured {configured_rtt} ms: {rtts[:5]}"
    assert configured_rtt <= median <= configured_rtt + 0.3, f"median RTT {median:.3f} ms"
    assert transfer["ok"], transfer
    assert report["final"] is True and report["error"] is None
    for name, d in report["directions"].items():
        assert d["frames"] > 100, name
        assert d["dropped_tx"] == d["dropped_queue"] == d["dropped_loss"] == 0, name
        assert d["delay_ms"]["min"] >= delay_ms, name
        assert d["lateness_us"]["median"] < 100.0, name
    # The bulk direction carried GSO super-frames through the vnet header unchanged.
    assert report["directions"]["a2b"]["gso_frames"] > 0


@pytest.mark.emulation
@needs_root_ip
def test_delay_line_rate_limit_in_namespaces(tmp_path: Path) -> None:
    rate = 20_000_000
    a2b = {"delay_ms": 2.0, "rate_bps": rate, "queue_packets": 200}
    b2a = {"delay_ms": 2.0}
    stats = tmp_path / "delayline.json"
    with _l2_chain() as chain, _running(_delay_line(chain, stats, a2b, b2a), "ready") as line:
        _tcp_transfer(chain, 1 << 20)  # warm-up: slow start and ARP out of the way
        transfer = _tcp_transfer(chain, 6 << 20)
        report = _stop_and_read_stats(line, stats)
    assert transfer["ok"], transfer
    goodput = (6 << 20) * 8 / transfer["seconds"]
    # TCP payload share of a 1514-byte frame with timestamps is 1448/1514; allow slow start.
    ceiling = rate * 1448 / 1514
    assert 0.75 * ceiling <= goodput <= 1.02 * ceiling, f"goodput {goodput / 1e6:.2f} Mbit/s"
    a = report["directions"]["a2b"]
    assert a["gso_frames"] > 0 and a["wire_bytes_in"] > a["bytes_in"]
    # Applied delay = propagation + serialization + queueing: never below the propagation delay.
    assert a["delay_ms"]["min"] >= 2.0 and a["delay_ms"]["median"] > 2.0
    assert a["dropped_tx"] == 0
