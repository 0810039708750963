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
import socket
import subprocess
import sys
import time
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
