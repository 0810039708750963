"""The compiled delay line's model and frame path on a virtual clock (``--trace``), exactly.

Every expectation is computed by hand or by the Python model's own functions (wire bytes), so a
change in the C arithmetic shows up as a different number, not a tolerance miss.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
from pathlib import Path

import pytest

from testbed.errors import ConfigError, KernelFeatureError
from testbed.net import delayhelper
from testbed.net.delayline_sched import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VNET_HDR_LEN,
    VnetHeader,
    wire_bytes,
)
from testbed.net.network import NetConfig
from topologies.shapes import LinkShape

HELPER_DIR = delayhelper.BINARY.parent


@pytest.fixture(scope="module")
def binary() -> Path:
    """The helper as `make setup` builds it (rebuilt here if the sources are newer)."""
    subprocess.run(["make", "-s", "-C", str(HELPER_DIR)], check=True, capture_output=True)
    return delayhelper.BINARY


def trace(binary: Path, events: list[str], a2b: str = "", b2a: str = "",
          seed: int = 1) -> list[str]:
    proc = subprocess.run([str(binary), "--trace", "--a2b", a2b, "--b2a", b2a, "--seed",
                           str(seed)], input="\n".join(events) + "\n", capture_output=True,
                          text=True, check=True, timeout=60)
    return proc.stdout.splitlines()


def tx_lines(out: list[str]) -> list[tuple[int, str, int]]:
    return [(int(f[1]), f[2], int(f[3])) for f in (line.split() for line in out)
            if f[0] == "tx"]


def test_limits_agree_with_python(binary: Path) -> None:
    out = json.loads(subprocess.run([str(binary), "--limits"], capture_output=True, text=True,
                                    check=True).stdout)
    for key, value in delayhelper.LIMITS.items():
        assert out[key] == value


def test_pure_delay_both_directions_earliest_first(binary: Path) -> None:
    out = trace(binary, ["0 a2b len=100", "0 b2a len=60", "2000 a2b len=1500"],
                a2b="delay_ns=5000", b2a="delay_ns=100")
    assert out == ["tx 100 b2a 0 60 1 -", "tx 5000 a2b 0 100 1 -", "tx 7000 a2b 1 1500 1 -"]


def test_rate_serialization_is_exact(binary: Path) -> None:
    # 8 Mbit/s: 1 byte per us. 100 B -> 100 us, then 1500 B waits for it -> ends at 1600 us.
    out = trace(binary, ["0 a2b len=100", "1000 a2b len=1500", "5000000 a2b len=3"],
                a2b="delay_ns=5000,rate_bps=8000000")
    assert tx_lines(out) == [(105_000, "a2b", 0), (1_605_000, "a2b", 1), (5_008_000, "a2b", 2)]


def test_rate_rounds_up_to_whole_nanoseconds(binary: Path) -> None:
    # 1 B at 3 bit/us: 8/3 us = 2666.67 ns -> 2667 ns.
    assert tx_lines(trace(binary, ["0 a2b len=1"], a2b="rate_bps=3000000")) == [(2667, "a2b", 0)]


def test_drop_tail_queue_counts_the_frame_in_service(binary: Path) -> None:
    # 3 frames of 1000 B at 8 Mbit/s (1 ms each) arrive together; the queue holds 2.
    out = trace(binary, ["0 a2b len=1000"] * 3 + ["2000000 a2b len=1000"],
                a2b="rate_bps=8000000,queue_packets=2")
    assert out == ["drop 0 a2b 2 queue", "tx 1000000 a2b 0 1000 1 -",
                   "tx 2000000 a2b 1 1000 1 -", "tx 3000000 a2b 3 1000 1 -"]


def test_queue_bytes_and_oversized_frame_at_an_empty_queue(binary: Path) -> None:
    out = trace(binary, ["0 a2b len=5000", "0 a2b len=10", "10000000 a2b len=100",
                         "10000000 a2b len=100"], a2b="rate_bps=8000000,queue_bytes=150")
    assert out[:2] == ["drop 0 a2b 1 queue", "tx 5000000 a2b 0 5000 1 -"]
    assert out[2:] == ["drop 10000000 a2b 3 queue", "tx 10100000 a2b 2 100 1 -"]


def _gso_frame(payload: int, mss: int = 1000, gso: int = VIRTIO_NET_HDR_GSO_TCPV4) -> bytes:
    head = 14 + 20 + 20
    hdr = VnetHeader(flags=VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type=gso, hdr_len=head,
                     gso_size=mss, csum_start=34, csum_offset=16).push()
    l2 = bytearray(head + payload)
    l2[34 + 12] = 5 << 4  # TCP data offset: 20 bytes
    return hdr + bytes(l2)


def test_gso_frame_queues_as_its_segments(binary: Path) -> None:
    frame = _gso_frame(3500)  # 4 segments: 54 + 3500 + 3 * 54 = 3716 wire bytes
    assert wire_bytes(frame) == (3716, 4)
    out = trace(binary, [f"0 a2b {frame.hex()}", "0 a2b len=60"],
                a2b="rate_bps=8000000,queue_packets=4")
    assert out == ["drop 0 a2b 1 queue", f"tx 3716000 a2b 0 3716 4 {frame.hex()}"]


def test_wire_bytes_agree_with_python_on_random_headers(binary: Path) -> None:
    rng = random.Random(7)
    frames = []
    for _ in range(400):
        body = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300)))
        hdr = struct.pack("<BBHHHH", rng.choice([0, 1, 3]),
                          rng.choice([0, 1, 3, 4, 5, 0x81, 0x84, 7]),
                          rng.randrange(0, 400), rng.choice([0, 1, 7, 100, 1448]),
                          rng.randrange(0, 300), rng.randrange(0, 40))
        frames.append(hdr + body)
    frames = [f for f in frames if len(f) > VNET_HDR_LEN]
    out = trace(binary, [f"0 a2b {f.hex()}" for f in frames])
    got = [(int(f[4]), int(f[5])) for f in (line.split() for line in out)]
    assert got == [wire_bytes(f) for f in frames]


def test_loss_is_seeded_reproducible_and_near_its_rate(binary: Path) -> None:
    events = [f"{i * 1000} a2b len=60" for i in range(20000)]
    first = trace(binary, events, a2b="loss=0.1", seed=3)
    assert first == trace(binary, events, a2b="loss=0.1", seed=3)
    assert first != trace(binary, events, a2b="loss=0.1", seed=4)
    lost = sum(line.endswith(" loss") for line in first)
    assert 2000 - 5 * 42 < lost < 2000 + 5 * 42  # 5 sigma of Binomial(20000, 0.1)
    assert not any(line.endswith(" loss") for line in trace(binary, events[:500], a2b="loss=0"))
    assert all(line.endswith(" loss") for line in trace(binary, events[:500], a2b="loss=1"))


def test_jitter_keeps_order_within_bounds_and_leaves_loss_alone(binary: Path) -> None:
    events = [f"{i * 100_000} a2b len=60" for i in range(3000)]
    txs = tx_lines(trace(binary, events, a2b="delay_ns=1000000,jitter_ns=500000"))
    dues = [due for due, _, _ in txs]
    assert [i for _, _, i in txs] == list(range(3000))
    assert dues == sorted(dues)
    lower = [due - i * 100_000 for due, _, i in txs]
    assert min(lower) >= 500_000 and max(lower) <= 1_500_000
    assert len(set(lower)) > 1000  # spread, not constant
    base = trace(binary, events, a2b="loss=0.05")
    with_jitter = trace(binary, events, a2b="loss=0.05,jitter_ns=300000")
    assert [x for x in base if "loss" in x] == [x for x in with_jitter if "loss" in x]


def test_fuzzed_frames_are_never_reordered_duplicated_or_changed(binary: Path) -> None:
    rng = random.Random(11)
    sizes = [1, 9, 10, 11, 60, 1514, 65536 + 1024, 65536 + 1024 + VNET_HDR_LEN + 1, 70000]
    sent: dict[str, list[bytes]] = {"a2b": [], "b2a": []}
    events = []
    for i in range(600):
        size = rng.choice(sizes) if i % 3 == 0 else rng.randrange(1, 2000)
        frame = bytes(rng.getrandbits(8) for _ in range(size)) if size < 3000 else \
            bytes(size)
        direction = rng.choice(["a2b", "b2a"])
        sent[direction].append(frame)
        events.append(f"{i * 50_000} {direction} {frame.hex()}")
    out = trace(binary, events, a2b="delay_ns=3000000,jitter_ns=2000000,rate_bps=100000000",
                b2a="delay_ns=1000000,loss=0.02")
    seen: dict[str, list[int]] = {"a2b": [], "b2a": []}
    for line in out:
        fields = line.split()
        direction, ident = fields[2], int(fields[3])
        frame = sent[direction][ident]
        seen[direction].append(ident)
        if fields[0] == "tx":
            assert bytes.fromhex(fields[6]) == frame
            assert VNET_HDR_LEN < len(frame) <= 65536 + 1024
        elif fields[4] == "trunc":
            assert len(frame) > 65536 + 1024
        elif fields[4] == "runt":
            assert len(frame) <= VNET_HDR_LEN
    for direction, idents in seen.items():
        assert sorted(idents) == list(range(len(sent[direction])))  # each frame exactly once
        txs = [int(f.split()[3]) for f in out if f.startswith("tx") and f.split()[2] == direction]
        assert txs == sorted(txs)  # in order


@pytest.mark.parametrize("args, message", [
    (["--a2b", "delay_ns=-1", "--b2a", ""], "delay_ns must be a non-negative integer"),
    (["--a2b", "rate_bps=10", "--b2a", ""], "rate_bps must be 0 (unlimited) or >= 1000"),
    (["--a2b", "loss=1.5", "--b2a", ""], "loss must be a fraction in [0, 1]"),
    (["--a2b", "bogus=1", "--b2a", ""], "unknown shape key 'bogus'"),
    (["--a2b", "", "--b2a", "", "--batch", "0"], "need 1 <= --batch"),
    (["--a2b", "", "--b2a", "", "--if-a", "x", "--if-b", "x"], "must differ"),
    (["--a2b", "", "--b2a", "", "--if-a", "nosuch0", "--if-b", "nosuch1"], "unknown interface"),
    (["--a2b", "", "--b2a", "", "--rx-ring", "auto"], "--rx-ring must be on or off"),
    (["--a2b", "", "--b2a", "", "--threads", "3"], "--threads 1 or 2"),
    (["--a2b", "", "--b2a", "", "--send-lead", "on"], "--send-lead must be auto or off"),
    (["--a2b", "", "--b2a", "", "--cpus", "x"], "--cpus must be one or two CPU numbers"),
    (["--a2b", "", "--b2a", "", "--cpus", "0,"], "--cpus must be one or two CPU numbers"),
    (["--a2b", "", "--b2a", "", "--cpus", "0,1,0"], "--cpus must be one or two CPU numbers"),
    (["--a2b", "", "--b2a", "", "--cpus", "-1"], "--cpus must be one or two CPU numbers"),
    (["--a2b", "", "--b2a", "", "--cpus", "1023"], "--cpus: CPU 1023 is not one this process"),
])
def test_bad_arguments_are_one_line_exit_2(binary: Path, args: list[str], message: str) -> None:
    proc = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=10)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and message in proc.stderr


@pytest.mark.parametrize("line", ["5 a2b len=1\n1 a2b len=1", "0 up len=1", "0 a2b zz",
                                  "0 a2b abc", "x a2b len=1"])
def test_bad_trace_is_one_line_exit_2(binary: Path, line: str) -> None:
    proc = subprocess.run([str(binary), "--trace", "--a2b", "", "--b2a", ""], input=line,
                          capture_output=True, text=True, timeout=10)
    assert proc.returncode == 2 and proc.stderr.startswith("delayline: error: trace line")


# --- the send lead's bookkeeping on a virtual clock (--lead-trace, txstamp.c) -------------------


def lead_trace(binary: Path, sends: list[tuple[int, int | None]]) -> list[tuple[int, int]]:
    """(class, lead ns) decided before each send call (at, ns its first frame took to reach
    the device, or None: not stamped)."""
    text = "".join(f"{at} {'-' if dev is None else dev}\n" for at, dev in sends)
    proc = subprocess.run([str(binary), "--lead-trace"], input=text, capture_output=True,
                          text=True, check=True, timeout=10)
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert [int(r[0]) for r in rows] == [at for at, _ in sends]
    return [(int(r[1]), int(r[2])) for r in rows]


MS = 1_000_000


def test_idle_classes_start_at_quarter_one_four_and_sixteen_ms(binary: Path) -> None:
    gaps = [249_999, 250_000, MS - 1, MS, 4 * MS - 1, 4 * MS, 16 * MS - 1, 16 * MS, 10_000 * MS]
    at, sends = 1, [(1, None)]
    for gap in gaps:
        at += gap
        sends.append((at, None))
    classes = [c for c, _ in lead_trace(binary, sends)]
    assert classes == [-1, -1, 0, 0, 1, 1, 2, 2, 3, 3]  # the first send: nothing to be idle since


def test_a_class_leads_by_the_least_of_its_last_eight_after_four(binary: Path) -> None:
    # Sends 20 ms apart (class 3), each stamped: the lead is 0 until four are learned, then
    # the smallest of the last eight; an old small one is forgotten after eight more.
    devs = [9_000, 20_000, 15_000, 18_000, 17_000, 16_000, 19_000, 21_000, 22_000, 23_000, 24_000]
    sends = [(1 + i * 20 * MS, dev) for i, dev in enumerate([None, *devs])]
    got = lead_trace(binary, sends)
    assert [c for c, _ in got] == [-1] + [3] * len(devs)
    # before call k (k = 1..11) the class has learned devs[:k-1]
    assert [lead for _, lead in got] == [0, 0, 0, 0, 0, 9_000, 9_000, 9_000, 9_000, 9_000,
                                         15_000, 15_000]


def test_unstamped_and_preempted_calls_teach_nothing_and_classes_are_separate(
        binary: Path) -> None:
    sends: list[tuple[int, int | None]] = [(1, None)]
    at = 1
    for dev in (5_000, 6_000, 7_000, 8_000):  # class 0: 0.5 ms apart
        at += MS // 2
        sends.append((at, dev))
    for dev in (None, 100_001, 3_000):  # unstamped, above the 100 us cap, then learned
        at += MS // 2
        sends.append((at, dev))
    at += 2 * MS  # class 1 has learned nothing
    sends.append((at, None))
    got = lead_trace(binary, sends)
    assert got[5] == (0, 5_000) and got[6] == (0, 5_000) and got[7] == (0, 5_000)
    assert got[8] == (1, 0)
    # the last class-0 measurement (3 us) counts from the next class-0 call on
    assert lead_trace(binary, [*sends[:8], (sends[7][0] + MS // 2, None)])[-1] == (0, 3_000)


@pytest.mark.parametrize("text", ["5 -\n5 -", "x -", "5 abc", "5"])
def test_bad_lead_trace_is_one_line_exit_2(binary: Path, text: str) -> None:
    proc = subprocess.run([str(binary), "--lead-trace"], input=text, capture_output=True,
                          text=True, timeout=10)
    assert proc.returncode == 2 and proc.stderr.startswith("delayline: error: lead trace line")
    assert proc.stderr.count("\n") == 1


def test_send_lead_reaches_the_helper_and_is_checked_before_a_network(tmp_path: Path) -> None:
    argv = delayhelper.c_argv("a", "b", LinkShape(), LinkShape(), 1, tmp_path / "s.json", 1,
                              send_lead="off")
    assert argv[argv.index("--send-lead") + 1] == "off"
    assert delayhelper.effective_send_lead("auto", "c") == "auto"
    assert delayhelper.effective_send_lead("auto", "python") == "off"
    with pytest.raises(ConfigError, match="unknown send lead"):
        NetConfig(send_lead="on")


def test_each_line_keeps_its_workers_on_cpus_of_their_own_in_turn(tmp_path: Path) -> None:
    few = delayhelper.RX_RING_MAX_LINES
    # Two workers per line in a small network: one CPU each, the lines' workers in turn.
    assert delayhelper.line_cpus(0, 1, [0, 1]) == [0, 1]
    assert [delayhelper.line_cpus(i, 2, [1, 0]) for i in (0, 1)] == [[0, 1], [0, 1]]
    assert [delayhelper.line_cpus(i, 3, [2, 5, 7]) for i in (0, 1, 2)] == [[2, 5], [7, 2],
                                                                           [5, 7]]
    # One worker per line in a large one; one CPU: every worker on it.
    assert [delayhelper.line_cpus(i, few + 1, [0, 1]) for i in range(3)] == [[0], [1], [0]]
    assert delayhelper.line_cpus(3, 1, [4]) == [4]
    with pytest.raises(ConfigError, match="no CPU"):
        delayhelper.line_cpus(0, 1, [])
    argv = delayhelper.c_argv("a", "b", LinkShape(), LinkShape(), 1, tmp_path / "s.json", 1,
                              cpus=[1, 0])
    assert argv[argv.index("--cpus") + 1] == "1,0"
    assert "--cpus" not in delayhelper.c_argv("a", "b", LinkShape(), LinkShape(), 1,
                                              tmp_path / "s.json", 1)


# --- selection and limits on the Python side ----------------------------------------------


def test_resolve_prefers_the_compiled_helper(binary: Path) -> None:
    assert delayhelper.resolve("auto", binary) == delayhelper.HelperChoice("c")
    assert delayhelper.resolve("python", binary).name == "python"


def test_missing_build_falls_back_with_the_cause(tmp_path: Path) -> None:
    choice = delayhelper.resolve("auto", tmp_path / "absent")
    assert choice.name == "python"
    assert choice.note is not None and "make setup" in choice.note and "Python" in choice.note
    with pytest.raises(KernelFeatureError, match="missing"):
        delayhelper.resolve("c", tmp_path / "absent")
    with pytest.raises(ConfigError, match="unknown delay helper"):
        delayhelper.resolve("rust")


def test_a_build_older_than_its_sources_is_refused_with_the_fix(tmp_path: Path) -> None:
    binary = tmp_path / "tcpinc-delayline"
    (tmp_path / "main.c").write_text("int main(void) { return 0; }\n")
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert delayhelper.resolve("auto", binary) == delayhelper.HelperChoice("c")
    os.utime(tmp_path / "main.c", (binary.stat().st_mtime + 5,) * 2)
    for requested in ("auto", "c"):
        with pytest.raises(KernelFeatureError, match=r"older than its sources \(main.c\)"):
            delayhelper.resolve(requested, binary)
    assert delayhelper.resolve("python", binary).name == "python"


@pytest.mark.parametrize("shape, message", [
    (LinkShape(delay_ms=60_001), "delay 60001 ms exceeds"),
    (LinkShape(rate_bps=999), "rate 999 bit/s outside"),
    (LinkShape(rate_bps=400_000_000_001), "outside"),
    (LinkShape(rate_bps=10**6, queue_packets=1_000_001), "queue 1000001 packets exceeds"),
])
def test_shapes_beyond_the_limits_are_refused(shape: LinkShape, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        delayhelper.check_shape("l0", "a2b", shape)


def test_shape_argument_and_spin_budget() -> None:
    shape = LinkShape(delay_ms=10.0000005, jitter_ms=0.25, loss=0.01, rate_bps=10**8,
                      queue_packets=50)
    assert delayhelper.shape_arg(shape) == (
        "delay_ns=10000000,jitter_ns=250000,loss=0.01,rate_bps=100000000,queue_packets=50,"
        "queue_bytes=0")
    assert delayhelper.spin_budget(1) == 0.25 and delayhelper.spin_budget(101) == 0.005


def test_rx_ring_and_two_threads_only_in_a_network_of_few_lines(tmp_path: Path) -> None:
    def ring(lines: int) -> tuple[str, str]:
        argv = delayhelper.c_argv("a", "b", LinkShape(), LinkShape(), 1, tmp_path / "s.json",
                                  lines)
        return argv[argv.index("--rx-ring") + 1], argv[argv.index("--threads") + 1]
    few, many = delayhelper.RX_RING_MAX_LINES, delayhelper.RX_RING_MAX_LINES + 1
    assert [ring(n) for n in (1, few, many, 101)] == [("on", "2"), ("on", "2"), ("off", "1"),
                                                      ("off", "1")]
