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
