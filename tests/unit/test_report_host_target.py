"""Issue 13's host-time target in the latency section (experiments/report.py)."""

from __future__ import annotations

import pandas as pd

from experiments.report import HOST_TARGET_MS, _host_target_text, host_target

COLUMNS = ["proto", "rtt_ms", "error_ms", "protocol_error_ms", "client_host_ms",
           "server_host_ms", "eno_query_ms"]


def excess(rows: list[tuple[object, ...]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS)


def test_each_arm_s_point_furthest_above_plain_in_the_same_run() -> None:
    table = excess([
        ("plain", 10, 0.5, 0.05, 0.2, 0.2, None),
        ("plain", 50, 0.9, 0.05, 0.4, 0.4, None),
        ("plain-tfo", 10, 3.0, 0.05, 1.0, 1.0, None),  # not encrypted: not judged
        ("tls", 10, 2.5, 0.1, 1.2, 1.1, 0.15),   # 2.0 above plain at 10 ms
        ("tls", 50, 2.6, 0.1, 1.2, 1.2, 0.15),   # 1.7 above plain at 50 ms
        ("tcpcrypt", 10, 1.9, 0.1, 0.9, 0.7, 0.2),
        ("tcpcrypt", 50, 2.3, 0.1, 1.1, 0.9, 0.2),
    ])
    worst = host_target(table).set_index("proto")
    assert sorted(worst.index) == ["tcpcrypt", "tls"]
    assert worst.loc["tls", "rtt_ms"] == 10
    assert abs(worst.loc["tls", "over_plain_ms"] - 2.0) < 1e-9
    assert abs(worst.loc["tls", "host_over_plain_ms"] - (2.3 - 0.4)) < 1e-9
    assert abs(worst.loc["tcpcrypt", "over_plain_ms"] - 1.4) < 1e-9


def test_text_says_met_or_by_how_much_not(tmp_path) -> None:
    met = excess([("plain", 10, 0.5, 0.05, 0.2, 0.2, None),
                  ("tls", 10, 0.5 + HOST_TARGET_MS, 0.1, 1.0, 1.0, 0.1)])
    met.to_csv(tmp_path / "excess.csv", index=False)
    assert "met at every point" in _host_target_text(tmp_path)[0]
    missed = excess([("plain", 10, 0.5, 0.05, 0.2, 0.2, None),
                     ("tls", 10, 2.75, 0.12, 1.2, 1.1, 0.1)])
    missed.to_csv(tmp_path / "excess.csv", index=False)
    text = "\n".join(_host_target_text(tmp_path))
    assert "**not met** by 1 of 1 arms" in text and "2.25 ms at worst, 0.75 ms over" in text
    assert "within 0.12 ms of theory" in text


def test_runs_without_a_time_split_say_nothing(tmp_path) -> None:
    pd.DataFrame({"proto": ["plain"], "rtt_ms": [10], "error_ms": [0.5]}).to_csv(
        tmp_path / "excess.csv", index=False)
    assert _host_target_text(tmp_path) == []
    assert _host_target_text(tmp_path / "missing") == []


def _floor_inputs() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    table = excess([
        ("plain", 10, 0.5, 0.05, 0.2, 0.2, None),
        ("plain", 200, 0.8, 0.05, 0.4, 0.3, None),
        ("tls", 10, 2.0, 0.1, 1.0, 0.9, 0.1),
        ("tls", 200, 4.0, 0.1, 2.0, 1.8, 0.1),
        ("tcpcrypt-resume", 10, 1.5, 0.1, 1.0, 0.4, 0.3),
        ("tls-0rtt", 10, 1.9, 0.1, 1.0, 0.8, 0.1),  # no cold-CPU row: no floor
    ])
    floor_cpu = pd.DataFrame(
        [("tls", 10.0, 0.4, 0.4), ("tcpcrypt-resume", 10.0, 0.05, 0.1),
         ("tls", 200.0, 1.1, 0.8), ("tcpcrypt-resume", 200.0, 0.4, 0.5)],
        columns=["arm", "idle_ms", "client_chain_cold_ms", "server_chain_cold_ms"])
    wakeup = pd.DataFrame([(0.0, 14.0), (5.0, 30.0), (20.0, 110.0), (200.0, 174.0)],
                          columns=["gap_ms", "median_us"])
    return table, floor_cpu, wakeup


def test_floor_is_cold_cpu_plus_a_cold_wake_up_per_extra_flight() -> None:
    from experiments.report import host_floor

    floor = host_floor(*_floor_inputs()).set_index(["proto", "rtt_ms"])
    assert sorted(floor.index) == [("tcpcrypt-resume", 10), ("tls", 10), ("tls", 200)]
    tls_long = floor.loc[("tls", 200)]
    # Full TLS: one round trip more than plain TCP, so one more flight on each host.
    assert tls_long["extra_flights"] == 2 and tls_long["cold_idle_ms"] == 200.0
    assert abs(tls_long["cold_wake_ms"] - 0.160) < 1e-9
    assert abs(tls_long["floor_ms"] - (1.9 + 2 * 0.160)) < 1e-9
    assert abs(tls_long["over_plain_ms"] - 3.2) < 1e-9
    # At 10 ms RTT: the 10 ms idle row, and the ping after 5 ms (the longest gap <= 10 ms).
    tls_short = floor.loc[("tls", 10)]
    assert abs(tls_short["floor_ms"] - (0.8 + 2 * 0.016)) < 1e-9
    # Resumed tcpcrypt has plain TCP's round trips: its cold CPU alone.
    assert floor.loc[("tcpcrypt-resume", 10), "extra_flights"] == 0
    assert abs(floor.loc[("tcpcrypt-resume", 10), "floor_ms"] - 0.15) < 1e-9


def test_text_gives_the_floor_and_where_it_is_above_the_target(tmp_path) -> None:
    table, floor_cpu, wakeup = _floor_inputs()
    latency, cost = tmp_path / "latency" / "R", tmp_path / "cost" / "R"
    latency.mkdir(parents=True)
    cost.mkdir(parents=True)
    table.to_csv(latency / "excess.csv", index=False)
    floor_cpu.to_csv(cost / "floor_cpu.csv", index=False)
    # A cost run without its wake-up ping gives no floor.
    assert "The floor under it" not in "\n".join(_host_target_text(latency, tmp_path, cost))
    wakeup.to_csv(cost / "wakeup.csv", index=False)
    text = "\n".join(_host_target_text(latency, tmp_path, cost))
    assert "**The floor under it on this machine** (cost experiment, the same run" in text
    assert "`cost/R/floor_cpu.csv`, `cost/R/wakeup.csv`" in text
    assert "Above the target: tls at 200 ms (floor 2.220 ms)." in text
    # Without a cost run the target's text stands alone.
    assert "The floor under it" not in "\n".join(_host_target_text(latency, tmp_path))
