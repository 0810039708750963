"""`tcpinc bench emulator`'s verdicts against the targets, on fixed rows (no network)."""

from __future__ import annotations

from typing import Any

import pytest

from testbed.errors import ConfigError
from testbed.net import bench


def _rows(helper: str, err: float, p99: float, wire: float, gso: float,
          sent: float, loss: float, app_extra: float = 0.0) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {"metric": "rtt", "method": m, "configured_rtt_ms": rtt, "median_ms": rtt + err,
         "kernel_median_err_ms": err if rtt else 0.9, "kernel_p99_err_ms": p99 if rtt else 9.0,
         "median_err_ms": (err + app_extra) if rtt else 0.9,
         "p99_err_ms": (p99 + app_extra) if rtt else 9.0}
        for rtt in (0, 10, 50, 200) for m in ("icmp-echo", "tcp-connect")]
    rows += [{"metric": "tcp-throughput", "method": "iperf3 (wire frames)", "gbit_s": wire,
              "configured_rtt_ms": 20.0, "retransmits": 0},
             {"metric": "tcp-throughput", "method": "iperf3 (gso frames)", "gbit_s": gso,
              "configured_rtt_ms": 20.0, "retransmits": 0},
             {"metric": "udp-pps", "method": "bench_udp 64 B", "configured_rtt_ms": 20.0,
              "offered_pps": 500_000, "sent_pps": sent, "received_pps": sent,
              "loss_percent": loss, "send_calls_failed": 0}]
    for row in rows:
        row["delay_helper"] = helper
    return rows


def test_targets_met_and_missed_per_helper() -> None:
    rows = _rows("c", 0.05, 0.2, 2.0, 10.0, 500_000, 0.5) + \
        _rows("python", 0.06, 0.1, 1.9, 12.0, 499_999, 0.5, app_extra=0.2)
    scale = [{"delay_helper": "c", "clients": 100, "start_s": 5.0, "stop_s": 2.1,
              "delayline_rss_mb": 170.0, "delay_lines": 101, "start_hosts_s": 1.25,
              "start_configure_s": 3.0},
             {"delay_helper": "python", "clients": 100, "skipped": "too slow"}]
    lines = bench.targets_summary(rows, scale)
    assert [line.rsplit(": ", 1)[-1] for line in lines] == [
        "met", "met", "met", "met", "met",  # c: kernel and app RTT; the 0 ms row does not count
        "NOT met", "NOT met", "NOT met", "met", "NOT met",  # python: both RTTs, wire, gso, pps
        "NOT met",                               # c at 100 clients: stop 2.1 s > 2 s
        "skipped (too slow)",
    ]
    assert "(kernel clock, the link): worst median +0.060 ms, -0.840 over the unshaped path " \
        "(target" in lines[5]
    assert "(application clock, link + end-host wake-up): worst median +0.260 ms" in lines[6]
    assert "start 5.0 s (hosts 1.2, configure 3.0), stop 2.1 s" in lines[10]


def test_lossy_packet_rates_do_not_count() -> None:
    lines = bench.targets_summary(_rows("c", 0, 0, 3, 11, 600_000, 1.0), [])
    assert lines[4].startswith("[c] 64-byte UDP at < 1 % loss: 0k pps sent")


def test_pps_row_counts_loss_on_the_interfaces() -> None:
    row = bench.pps_row(500_000, {"seconds": 2.0, "failed_calls": 3}, 1_000_000, 995_000)
    assert row["sent_pps"] == 500_000 and row["received_pps"] == 497_500
    assert row["loss_percent"] == 0.5 and row["send_calls_failed"] == 3
    assert bench.pps_row(1, {"seconds": 1.0, "failed_calls": 0}, 0, 0)["loss_percent"] == 100


@pytest.mark.parametrize("text, sizes", [("10,100", [10, 100]), ("none", []), ("", []),
                                         ("7", [7])])
def test_fanin_sizes(text: str, sizes: list[int]) -> None:
    assert bench._fanin_sizes(text) == sizes


@pytest.mark.parametrize("text", ["ten", "0", "10,-1"])
def test_bad_fanin_sizes_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--fanin-clients"):
        bench._fanin_sizes(text)


def test_link_figures_take_the_worst_direction() -> None:
    def d(frames: int, med: float, p99: float) -> dict[str, Any]:
        return {"frames": frames, "lateness_us": {"count": frames, "median": med, "p99": p99}}
    reports = {"l0": {"cpu_s": 0.5, "directions": {"a2b": {**d(1000, 1.0, 50.0),
                                                            "dropped_rcvbuf": 7},
                                                    "b2a": d(0, 0.0, 0.0)}},
               "l1": {"cpu_s": 0.5, "directions": {"a2b": d(1000, 3.0, 20.0),
                                                    "b2a": d(2000, 2.0, 10.0)}}}
    fig = bench.link_figures(reports)
    assert fig["frames"] == 4000 and fig["cpu_us_per_packet"] == 250.0
    assert fig["line_drops"] == 7
    assert fig["lateness_median_us"] == 3.0 and fig["lateness_p99_us"] == 50.0
    assert bench.link_figures({}) == {}


def test_link_figures_report_the_device_stamps_of_the_compiled_line() -> None:
    def stamped(med: float, p99: float, to_dev: float, early: int, early_max: float,
                lead: str = "auto") -> dict[str, Any]:
        return {"frames": 10, "lateness_us": {"count": 10, "median": 0.0, "p99": 1.0},
                "device_stamps": {"stamped": 9, "early": early, "early_max_us": early_max,
                                  "send_lead": lead, "to_device_us": {"median": to_dev},
                                  "device_lateness_us": {"median": med, "p99": p99}}}
    none = {**stamped(0, 0, 0, 0, 0), "device_stamps": {"stamped": 0}}
    reports = {"l0": {"cpu_s": 0.1, "directions": {"a2b": stamped(2.5, 20.0, 16.0, 3, 1.5),
                                                    "b2a": stamped(3.5, 11.0, 18.0, 2, 6.7)}},
               "l1": {"cpu_s": 0.1, "directions": {"a2b": none, "b2a": none}}}
    fig = bench.link_figures(reports)
    assert fig["device_late_median_us"] == 3.5 and fig["device_late_p99_us"] == 20.0
    assert fig["to_device_median_us"] == 18.0 and fig["send_lead"] == "auto"
    assert fig["early_frames"] == 5 and fig["early_max_us"] == 6.7
    row = {"metric": "rtt", "median_ms": 10.05, "kernel_median_err_ms": 0.03,
           "kernel_p99_err_ms": 0.09, "median_err_ms": 0.1, "p99_err_ms": 0.3, **fig}
    assert ("at device +3.5/+20.0 us after due (send path 18 us, lead auto, 5 early by <= "
            "6.7 us)") in bench._result(row)
    # the Python line stamps nothing: no device figures, none printed
    plain = bench.link_figures({"l": {"cpu_s": 0.1, "directions": {"a2b": none, "b2a": none}}})
    assert "device_late_median_us" not in plain
    unstamped = {k: v for k, v in row.items() if k not in fig or k in plain}
    assert "at device" not in bench._result(unstamped)


def _steered(rows: list[dict[str, Any]], wire: float, gso: float,
             sent: float) -> list[dict[str, Any]]:
    """The same helper's throughput and packet-rate rows again, measured with rx steering."""
    extra = []
    for row in rows:
        if row["metric"] == "rtt":
            continue
        copy = {**row, "rx_steering": "rps"}
        if row["metric"] == "udp-pps":
            copy.update(sent_pps=sent, received_pps=sent)
        else:
            copy["gbit_s"] = wire if "wire" in row["method"] else gso
        extra.append(copy)
        row["rx_steering"] = "off"
    return rows + extra


def test_a_target_met_only_with_rx_steering_says_so() -> None:
    rows = _steered(_rows("c", 0.01, 0.1, 2.5, 7.0, 300_000, 0.0), 2.9, 8.0, 500_000)
    lines = bench.targets_summary(rows, [])
    assert lines[2] == ("[c] TCP 20 ms, wire frames: 2.5 Gbit/s (rx steering off), 2.9 Gbit/s "
                        "(rx steering rps) (target >= 2): met")
    assert lines[3].endswith("8.0 Gbit/s (rx steering rps) (target >= 10): NOT met")
    assert lines[4] == ("[c] 64-byte UDP at < 1 % loss: 300k pps sent (rx steering off), "
                        "500k pps sent (rx steering rps) (target >= 500k): "
                        "met with rx steering rps only")


def test_steering_rows_are_labelled() -> None:
    row = {**bench.pps_row(500_000, {"seconds": 2.0, "failed_calls": 0}, 1_000_000, 1_000_000),
           "rx_steering": "rps"}
    assert bench._result(row).endswith(", rx steering rps")


def test_rtt_error_over_the_unshaped_path_probed_at_the_same_pace() -> None:
    rows = _rows("c", 0.06, 0.1, 2.5, 11.0, 500_000, 0.0)
    paced = [{"metric": "rtt", "method": m, "configured_rtt_ms": 0.0, "delay_helper": "unshaped",
              "paced_for_rtt_ms": rtt, "probe_gap_ms": rtt + 2.0,
              "kernel_median_err_ms": 0.04 if rtt == 200 else 0.01, "kernel_p99_err_ms": 0.1,
              "median_ms": 0.05, "median_err_ms": 0.05, "p99_err_ms": 0.2}
             for rtt in (10, 50, 200) for m in ("icmp-echo", "tcp-connect")]
    lines = bench.targets_summary(rows + paced, [])
    assert len(lines) == 5  # the paced rows are no helper of their own
    # worst over the 0 ms row: 0.06 - 0.9; worst over the paced path: 0.06 - 0.01 at 10/50 ms
    assert ", -0.840 over the unshaped path, +0.050 over it probed at the same pace (target" \
        in lines[0]
    assert lines[0].endswith(": NOT met")  # the verdict stays on the absolute error
    table = bench.format_table(paced[:1])
    assert "unshaped rtt             icmp-echo, idle 12" in table
