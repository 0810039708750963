"""Tests for experiments/timing.py: split tables, host time per arm, the fidelity check."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from experiments import timing
from experiments.runner import select_protocols


def _summary(plain_error: float, applied_rtt: float = 10.0) -> pd.DataFrame:
    return pd.DataFrame([
        {"proto": "plain", "rtt_ms": 10, "error_ms": plain_error, "applied_rtt_ms": applied_rtt},
        {"proto": "tls", "rtt_ms": 10, "error_ms": 9.0, "applied_rtt_ms": 10.0},
    ])


def _networks(run_dir: Path, lateness_us: float | None) -> None:
    direction = {"configured_ms": 5.0, "median_ms": 5.0, "lateness_p99_us": lateness_us}
    line = {"tag": "plain-10ms", "applied_delay": {"l0": {"a2b": direction, "b2a": direction}}}
    (run_dir / "networks.jsonl").write_text(json.dumps(line) + "\n")


def test_fidelity_passes_on_a_quiet_run(tmp_path: Path) -> None:
    _networks(tmp_path, 12.5)
    check = timing.fidelity(_summary(0.4), tmp_path)
    assert check["noisy"] is False and check["reasons"] == []
    assert check["plain_excess_ms"] == {"10": 0.4}
    assert check["delayline_lateness_p99_us"] == 12.5
    assert check["applied_rtt_error_max_ms"] == 0.0
    assert timing.verdict_line(check).startswith("Fidelity check passed (plain TCP excess "
                                                 "+0.40 ms at 10 ms;")


@pytest.mark.parametrize(("plain", "applied", "lateness", "reason"), [
    (1.6, 10.0, 10.0, "plain TCP +1.60 ms over theory at 10 ms RTT (threshold 1.5 ms)"),
    (0.2, 10.5, 10.0, "delay line applied the RTT 0.500 ms off (threshold 0.2 ms)"),
    (0.2, 10.0, 450.0, "delay line p99 lateness 450 us (threshold 200 us)"),
])
def test_fidelity_marks_noisy_runs(tmp_path: Path, plain: float, applied: float,
                                   lateness: float, reason: str) -> None:
    _networks(tmp_path, lateness)
    check = timing.fidelity(_summary(plain, applied), tmp_path)
    assert check["noisy"] is True and check["reasons"] == [reason]
    assert timing.verdict_line(check).startswith(f"**noisy run**: {reason} (")


def test_fidelity_reports_the_device_stamps_without_judging_them(tmp_path: Path) -> None:
    stamped = {"configured_ms": 5.0, "median_ms": 5.0, "lateness_p99_us": 3.0,
               "device_stamped": 40, "device_lateness_p99_us": 900.0, "early_frames": 3,
               "early_max_us": 2.5}
    quiet = {**stamped, "device_lateness_p99_us": 20.0, "early_frames": 1, "early_max_us": 4.0}
    unstamped = {"configured_ms": 5.0, "median_ms": 5.0, "lateness_p99_us": 1.0}
    line = {"tag": "t", "applied_delay": {"l0": {"a2b": stamped, "b2a": quiet},
                                          "l1": {"a2b": unstamped, "b2a": unstamped}}}
    (tmp_path / "networks.jsonl").write_text(json.dumps(line) + "\n")
    check = timing.fidelity(_summary(0.4), tmp_path)
    assert check["noisy"] is False  # a late device is reported, not a reason
    assert check["delayline_device_lateness_p99_us"] == 900.0
    assert check["delayline_early_frames"] == 4 and check["delayline_early_max_us"] == 4.0
    assert check["delayline_lateness_p99_us"] == 3.0
    assert check["delayline_device_stamped"] == 80
    assert "at the device p99 900.0 us, 4 of 80 stamped frames early by <= 4.0 us" in \
        timing.verdict_line(check)


def test_fidelity_without_calibration_or_lateness(tmp_path: Path) -> None:
    check = timing.fidelity(_summary(0.2).iloc[1:], tmp_path)
    assert check["noisy"] is True
    assert check["reasons"] == ["no plain calibration point in this run"]
    assert check["delayline_lateness_p99_us"] is None
    assert check["delayline_device_lateness_p99_us"] is None
    assert check["delayline_early_frames"] is None


def test_fidelity_is_recorded_in_metadata(tmp_path: Path) -> None:
    (tmp_path / "metadata.json").write_text(json.dumps({"experiment": "latency"}))
    timing.record_fidelity(tmp_path, {"noisy": False})
    assert json.loads((tmp_path / "metadata.json").read_text()) == {
        "experiment": "latency", "fidelity": {"noisy": False}}


def test_calibration_arm_survives_a_protocol_filter() -> None:
    points = [{"proto": p, "rtt_ms": 10} for p in ("plain", "tls", "tcpcrypt")]
    assert select_protocols(points, "tls", keep="plain") == points[:2]
    assert select_protocols(points, "tls") == points[1:2]


def _records() -> pd.DataFrame:
    split = {"split_error": None}
    return pd.DataFrame([
        {"proto": "tls", "rtt_ms": 10, "ttfb_ms": 32.0, "network_ms": 30.0,
         "protocol_latency_ms": 30.0, "client_host_ms": 1.5, "server_host_ms": 0.5, **split},
        {"proto": "tls", "rtt_ms": 10, "ttfb_ms": 34.0, "network_ms": 30.2,
         "protocol_latency_ms": 30.2, "client_host_ms": 2.5, "server_host_ms": 1.3, **split},
        {"proto": "tls", "rtt_ms": 10, "ttfb_ms": 40.0, "network_ms": None,
         "protocol_latency_ms": None, "client_host_ms": None, "server_host_ms": None,
         "split_error": "client capture dropped 1 packets"},
    ])


def test_split_and_host_tables() -> None:
    row = timing.split_table(_records()).iloc[0]
    assert row["n_split"] == 2 and row["split_empty"] == 1
    assert row["protocol_latency_ms"] == pytest.approx(30.1)
    assert row["protocol_error_ms"] == pytest.approx(0.1)
    assert row["host_median_ms"] == pytest.approx(2.9)  # median of 2.0 and 3.8
    host = timing.host_table(_records()).iloc[0]
    assert host["n"] == 2 and host["host_median_ms"] == pytest.approx(2.9)
    assert host["host_p95_ms"] == pytest.approx(2.0 + 0.95 * 1.8)
    assert timing.split_errors(_records()) == {"client capture dropped 1 packets": 1}


def test_bench_endpoints_flights_and_table() -> None:
    from testbed.bench_endpoints import flight_labels, format_rows, hop_medians, on_chain_ms

    chain = [["c2s", 0.0, 5.0], ["s2c", 0.1, 5.0], ["c2s", 1.0, 5.0], ["s2c", 0.5, 5.0]]
    assert flight_labels(chain) == ["C1", "S1", "C2", "S2"]
    slower = [["c2s", 0.0, 5.0], ["s2c", 0.3, 5.0], ["c2s", 2.0, 5.0], ["s2c", 0.7, 5.0]]
    # A chain of another shape (a fallback, a retransmitted flight) is left out.
    odd = [["c2s", 0.0, 5.0], ["s2c", 9.0, 5.0]]
    records = [{"split_hops": chain}, {"split_hops": slower}, {"split_hops": chain},
               {"split_hops": odd}, {"split_hops": None}]
    assert hop_medians(records) == {"C1": 0.0, "S1": 0.1, "C2": 1.0, "S2": 0.5}
    assert hop_medians([{"split_hops": None}]) == {}
    row = {"arm": "plain", "rtt_ms": 200.0, "n": 3, "client_host_ms": 0.6,
           "server_host_ms": 0.8, "cpu_client_ms": None, "cpu_server_ms": None,
           "cold_client_ms": None, "cold_server_ms": None, "flights": hop_medians(records)}
    tls = {**row, "arm": "tls", "rtt_ms": 10.0, "client_host_ms": 2.0, "server_host_ms": 1.5,
           "cpu_client_ms": 0.4, "cpu_server_ms": 0.45, "cold_client_ms": 1.25,
           "cold_server_ms": 1.0}
    lines = format_rows([row, tls]).splitlines()
    assert lines[-2] == ("plain              200   3   0.600   0.800      -      -      -      -"
                         "      -      -  S1 0.100 C2 1.000 S2 0.500")
    assert lines[-1] == ("tls                 10   3   2.000   1.500  0.400  0.450  1.250  1.000"
                         "  0.750  0.500  S1 0.100 C2 1.000 S2 0.500")
    # The client's first flight is made while the SYN travels: not on the critical chain.
    assert on_chain_ms([0.001, 0.002, 0.0005], [0.0001, 0.003]) == \
        (pytest.approx(2.5), pytest.approx(3.1))


def test_bench_endpoints_floor_against_the_host_target() -> None:
    from testbed.bench_endpoints import floor_rows, format_floor

    four = {"C1": 0.0, "S1": 0.05, "C2": 0.2, "S2": 0.3}
    six = {**four, "C3": 0.6, "S3": 0.4}
    rows = [
        {"arm": "plain", "rtt_ms": 200.0, "client_host_ms": 0.5, "server_host_ms": 0.3,
         "cold_client_ms": None, "cold_server_ms": None, "flights": four},
        # Two flights more than plain TCP: two cold wake-ups on top of the cold CPU.
        {"arm": "tls", "rtt_ms": 200.0, "client_host_ms": 2.4, "server_host_ms": 1.7,
         "cold_client_ms": 1.1, "cold_server_ms": 0.8, "flights": six},
        # As many flights as plain TCP: the cold CPU alone.
        {"arm": "tcpcrypt-resume", "rtt_ms": 200.0, "client_host_ms": 1.9,
         "server_host_ms": 0.6, "cold_client_ms": 0.4, "cold_server_ms": 0.5, "flights": four},
        # No plain row at this RTT: nothing to stand against.
        {"arm": "tls", "rtt_ms": 10.0, "client_host_ms": 1.4, "server_host_ms": 1.1,
         "cold_client_ms": 0.4, "cold_server_ms": 0.4, "flights": six},
    ]
    wake = {0.0: 13.0, 200.0: 169.0}
    floors = floor_rows(rows, wake)
    assert [(f["arm"], f["rtt_ms"]) for f in floors] == [("tls", 200.0),
                                                          ("tcpcrypt-resume", 200.0)]
    tls, resume = floors
    assert tls["over_plain_ms"] == pytest.approx(4.1 - 0.8)
    assert tls["extra_flights"] == 2 and tls["cold_wake_ms"] == pytest.approx(0.156)
    assert tls["floor_ms"] == pytest.approx(1.9 + 2 * 0.156)
    assert tls["floor_over_target_ms"] == pytest.approx(1.9 + 0.312 - 1.5)
    assert resume["extra_flights"] == 0 and resume["floor_ms"] == pytest.approx(0.9)
    lines = format_floor(floors, wake).splitlines()
    assert "13 us after 0 ms, 169 us after 200 ms" in lines[0]
    assert lines[2] == ("tls                200      3.300  1.900        2  2.212  floor 0.712 "
                        "above the target: not reachable by any harness here")
    assert lines[3] == ("tcpcrypt-resume    200      1.700  0.900        0  0.900  floor under "
                        "the target: 0.600 left for the rest")


def test_pooled_applied_rtt_puts_a_networks_delay_on_each_of_its_points(tmp_path: Path) -> None:
    from experiments.common import pooled_applied_rtt

    one_way = {"a2b": {"median_ms": 5.01}, "b2a": {"median_ms": 5.03}}
    lines = [{"tag": "plain-10ms,tls-10ms", "applied_delay": {"l0": one_way}},
             {"tag": "plain-50ms", "applied_delay": {"l0": {"a2b": {"median_ms": None},
                                                             "b2a": {"median_ms": 25.0}}}}]
    (tmp_path / "networks.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert pooled_applied_rtt(tmp_path) == {"plain-10ms": pytest.approx(10.04),
                                            "tls-10ms": pytest.approx(10.04)}
    assert pooled_applied_rtt(tmp_path / "missing") == {}
