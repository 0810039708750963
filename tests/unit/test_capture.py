"""Tests for testbed.net.capture: the tcpdump command builder and the Capture lifecycle.

The builder and the lifecycle (with a fake tcpdump written in Python) need no root; the real
tcpdump is tested in tests/emulation/test_capture_ns.py.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from testbed.net.capture import (
    Capture,
    CaptureError,
    Captures,
    CaptureStats,
    parse_stats,
    tcpdump_command,
)

FAKE_TCPDUMP = r"""
import signal, sys, time
def stats(*_):
    sys.stderr.write("3 packets captured\n5 packets received by filter\n"
                     "2 packets dropped by kernel\n")
    sys.stderr.flush()
    sys.exit(0)
mode = sys.argv[1]
if mode == "pair":  # exits with counters only once its peer got its SIGINT too
    def paired(*_):
        open(sys.argv[2], "w").close()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                open(sys.argv[3]).close()
            except FileNotFoundError:
                time.sleep(0.01)
                continue
            stats()
        sys.exit(3)
    signal.signal(signal.SIGINT, paired)
elif mode == "ignore":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
elif mode != "mute":
    signal.signal(signal.SIGINT, stats)
if mode == "fail":
    sys.stderr.write("tcpdump: fake0: No such device exists\n")
    sys.exit(1)
if mode != "mute":
    sys.stderr.write("tcpdump: listening on fake0, link-type EN10MB (Ethernet), "
                     "snapshot length 262144 bytes\n")
    sys.stderr.flush()
while True:
    time.sleep(0.05)
"""


class FakeTcpdumpHost:
    """Runs a Python stand-in for tcpdump whatever argv it is given; records the call."""

    name = "fake"

    def __init__(self, mode: str, *extra: str) -> None:
        self.mode = mode
        self.extra = extra
        self.calls: list[tuple[list[str], dict[str, Any]]] = []

    def popen(self, args: list[str], /, **kwargs: Any) -> subprocess.Popen[bytes]:
        self.calls.append((args, kwargs))
        return subprocess.Popen([sys.executable, "-c", FAKE_TCPDUMP, self.mode, *self.extra],
                                **kwargs)


# --------------------------------------------------------------------------- builder


def test_command_defaults() -> None:
    assert tcpdump_command("h1-eth0", "/tmp/run/client.pcap") == [
        "tcpdump", "-i", "h1-eth0", "-w", "/tmp/run/client.pcap", "-U", "-n",
        "--immediate-mode", "-s", "0", "-B", "8192", "-Z", "root",
    ]


def test_command_options() -> None:
    cmd = tcpdump_command("s1-eth2", Path("/r/x.pcap"), snaplen=128, bpf_filter="tcp port 443",
                          buffer_kib=65536, nano=True, user=None, executable="/usr/bin/tcpdump")
    assert cmd == [
        "/usr/bin/tcpdump", "-i", "s1-eth2", "-w", "/r/x.pcap", "-U", "-n", "--immediate-mode",
        "-s", "128", "-B", "65536", "--time-stamp-precision", "nano", "tcp port 443",
    ]


@pytest.mark.parametrize("kwargs", [{"snaplen": -1}, {"buffer_kib": 0}])
def test_command_rejects_bad_numbers(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        tcpdump_command("lo", "/tmp/x.pcap", **kwargs)


@pytest.mark.parametrize("intf", ["", "-w"])
def test_command_rejects_bad_interface(intf: str) -> None:
    with pytest.raises(ValueError, match="interface"):
        tcpdump_command(intf, "/tmp/x.pcap")


def test_parse_stats() -> None:
    text = ("tcpdump: listening on lo, link-type EN10MB (Ethernet), snapshot length 262144 bytes\n"
            "1 packet captured\n12 packets received by filter\n0 packets dropped by kernel\n")
    stats = parse_stats(text)
    assert stats == CaptureStats(captured=1, received=12, dropped_by_kernel=0)
    assert (stats.dropped, stats.complete) == (0, True)
    drops = "4 packets dropped by kernel\n3 packets dropped by interface"
    with_if = parse_stats(text.replace("0 packets dropped by kernel", drops))
    assert (with_if.dropped_by_kernel, with_if.dropped_by_interface, with_if.dropped) == (4, 3, 7)
    assert not with_if.complete
    with pytest.raises(CaptureError, match="received"):
        parse_stats("1 packet captured\n")


# --------------------------------------------------------------------------- lifecycle (fake)


def test_lifecycle_reports_drops(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    host = FakeTcpdumpHost("normal")
    caplog.set_level(logging.INFO, logger="testbed.net.capture")
    with Capture(host, "fake0", tmp_path / "c.pcap", settle=0) as cap:
        assert cap.running
    assert not cap.running
    assert cap.stats == CaptureStats(captured=3, received=5, dropped_by_kernel=2)
    assert cap.stop() is cap.stats  # idempotent
    (args, kwargs), = host.calls
    assert args == cap.command and args[:3] == ["tcpdump", "-i", "fake0"]
    assert kwargs["stderr"] is subprocess.PIPE and "start_new_session" not in kwargs
    # The command line is logged before it runs; drops are a warning, not silence.
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == f"fake: {cap.command_line}"
    assert any("incomplete: 2 packets dropped" in m for m in messages)
    assert any(r.levelno == logging.WARNING for r in caplog.records)


def test_start_fails_with_command_and_stderr(tmp_path: Path) -> None:
    cap = Capture(FakeTcpdumpHost("fail"), "fake0", tmp_path / "c.pcap")
    with pytest.raises(CaptureError) as err:
        cap.start()
    text = str(err.value)
    assert "exited with code 1" in text and cap.command_line in text
    assert "No such device exists" in text
    assert not cap.running


def test_start_times_out_and_ends_process(tmp_path: Path) -> None:
    cap = Capture(FakeTcpdumpHost("mute"), "fake0", tmp_path / "c.pcap", start_timeout=0.3,
                  stop_timeout=1.0)
    with pytest.raises(CaptureError, match=r"did not report listening within 0.3 s"):
        cap.start()
    assert not cap.running


def test_stop_escalates_to_sigkill_and_raises(tmp_path: Path) -> None:
    cap = Capture(FakeTcpdumpHost("ignore"), "fake0", tmp_path / "c.pcap", stop_timeout=0.3,
                  settle=0)
    cap.start()
    with pytest.raises(CaptureError, match="exited with code -9"):
        cap.stop()
    assert not cap.running


def test_exit_stops_on_exception_and_keeps_it_primary(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), Capture(
            FakeTcpdumpHost("normal"), "fake0", tmp_path / "c.pcap", settle=0) as cap:
        raise RuntimeError("boom")
    assert not cap.running and cap.stats is not None
    with pytest.raises(RuntimeError, match="boom") as err, Capture(
            FakeTcpdumpHost("ignore"), "fake0", tmp_path / "d.pcap", settle=0,
            stop_timeout=0.2) as cap2:
        raise RuntimeError("boom")
    assert not cap2.running
    assert any("capture stop also failed" in note for note in err.value.__notes__)


def test_stop_before_start_and_double_start(tmp_path: Path) -> None:
    cap = Capture(FakeTcpdumpHost("normal"), "fake0", tmp_path / "c.pcap", settle=0)
    with pytest.raises(CaptureError, match="never started"):
        cap.stop()
    with cap, pytest.raises(CaptureError, match="already started"):
        cap.start()


def test_captures_start_and_stop_together(tmp_path: Path) -> None:
    hosts = [FakeTcpdumpHost("normal"), FakeTcpdumpHost("normal")]
    caps = [Capture(h, f"fake{i}", tmp_path / f"{i}.pcap", settle=0)
            for i, h in enumerate(hosts)]
    with Captures(*caps):
        assert all(c.running for c in caps)
    assert [c.stats for c in caps] == [CaptureStats(3, 5, 2)] * 2
    assert not any(c.running for c in caps)


def test_captures_stop_all_when_one_fails(tmp_path: Path) -> None:
    good = Capture(FakeTcpdumpHost("normal"), "fake0", tmp_path / "a.pcap", settle=0)
    bad = Capture(FakeTcpdumpHost("fail"), "fake1", tmp_path / "b.pcap", settle=0)
    with pytest.raises(CaptureError, match="exited with code 1"), Captures(good, bad):
        pass
    assert not good.running and not bad.running
    assert good.stats == CaptureStats(3, 5, 2)
    stuck = Capture(FakeTcpdumpHost("ignore"), "fake2", tmp_path / "c.pcap", settle=0,
                    stop_timeout=0.2)
    other = Capture(FakeTcpdumpHost("normal"), "fake3", tmp_path / "d.pcap", settle=0)
    with pytest.raises(RuntimeError, match="boom") as err, Captures(stuck, other):
        raise RuntimeError("boom")
    assert other.stats is not None and not stuck.running
    assert any("capture stop also failed" in note for note in err.value.__notes__)


def test_captures_are_interrupted_together_before_any_is_waited_for(tmp_path: Path) -> None:
    # Each stand-in exits cleanly only once the other got its SIGINT: stopping one after the
    # other would leave the first without its peer's marker (exit code 3, no counters).
    a, b = tmp_path / "a.int", tmp_path / "b.int"
    caps = [Capture(FakeTcpdumpHost("pair", str(a), str(b)), "fake0", tmp_path / "a.pcap",
                    settle=0),
            Capture(FakeTcpdumpHost("pair", str(b), str(a)), "fake1", tmp_path / "b.pcap",
                    settle=0)]
    with Captures(*caps):
        pass
    assert [c.stats for c in caps] == [CaptureStats(3, 5, 2)] * 2


def test_captures_launched_early_then_awaited_or_abandoned(tmp_path: Path) -> None:
    caps = [Capture(FakeTcpdumpHost("normal"), f"fake{i}", tmp_path / f"{i}.pcap", settle=0)
            for i in range(2)]
    both = Captures(*caps)
    both.launch()
    assert all(c.launched and c.running for c in caps)
    with both:  # launched already: the block only waits for them to listen
        pass
    assert [c.stats for c in caps] == [CaptureStats(3, 5, 2)] * 2
    assert [len(c.host.calls) for c in caps] == [1, 1]
    left = [Capture(FakeTcpdumpHost("normal"), f"fake{i}", tmp_path / f"l{i}.pcap", settle=0)
            for i in range(2)]
    never = Captures(*left)
    never.launch()
    for cap in left:  # as a point's server takes its time to fail: the stand-ins are up
        cap.await_listening()
    never.abandon(RuntimeError("the server never became ready"))
    assert not any(c.running for c in left) and all(c.stats is not None for c in left)
    never.abandon(RuntimeError("again"))  # stopping twice does nothing
