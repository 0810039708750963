"""The handshake table of `tcpinc bench handshake` and the cost experiment (testbed/bench_teps.py),
with its cold columns, and what the report says of them (no timed asserts)."""

from __future__ import annotations

import pandas as pd
import pytest

from experiments.report import _cold_text
from testbed import bench_teps
from testbed.teps import benchflights


def test_handshake_rows_add_cold_figures_for_the_latency_arms_variants(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []
    monkeypatch.setattr(benchflights.time, "sleep", slept.append)
    rows = bench_teps.handshake_rows(2, cold_count=1)
    cold = [(r["tep"], r["variant"]) for r in rows if r["server_cpu_cold_ms"] is not None]
    assert cold == [("tcpcrypt-x25519", "fresh"), ("tcpcrypt-x25519", "resumed"),
                    ("tls (0x30, non-standard)", "full"),
                    ("tls (0x30, non-standard)", "resumed (beyond the draft)"),
                    ("tls (0x30, non-standard)", "0-RTT (beyond the draft)")]
    assert all(r["client_cpu_cold_ms"] > 0 and r["cold_idle_ms"] == 10.0
               for r in rows if r["client_cpu_cold_ms"] is not None)
    assert len(rows) == 11 and set(slept) == {bench_teps.COLD_IDLE_S}
    # One cold handshake each: tcpcrypt sleeps before its three flights, TLS before five
    # (resumed and 0-RTT ones too: the client's and the server's flights as in a full one).
    assert len(slept) == 2 * 3 + 3 * 5
    warm = bench_teps.handshake_rows(1)
    assert all(r["client_cpu_cold_ms"] is None for r in warm)
    assert "cold" in bench_teps.format_handshakes(rows).splitlines()[0]


def test_cost_report_states_the_cold_over_warm_ratio() -> None:
    hs = pd.DataFrame([
        {"tep": "a", "variant": "fresh", "client_cpu_ms": 0.1, "server_cpu_ms": 0.1,
         "client_cpu_cold_ms": 0.3, "server_cpu_cold_ms": 0.3, "cold_idle_ms": 10.0},
        {"tep": "b", "variant": "full", "client_cpu_ms": 0.5, "server_cpu_ms": 0.5,
         "client_cpu_cold_ms": 1.0, "server_cpu_cold_ms": 1.25, "cold_idle_ms": 10.0},
        {"tep": "c", "variant": "fresh", "client_cpu_ms": 0.5, "server_cpu_ms": 0.5,
         "client_cpu_cold_ms": None, "server_cpu_cold_ms": None, "cold_idle_ms": None}])
    text = _cold_text(hs)
    assert "with 10 ms of sleep before each flight" in text[0]
    assert "2.2-3.0x the CPU of back-to-back handshakes" in text[0]
    assert _cold_text(hs.drop(columns=["client_cpu_cold_ms", "server_cpu_cold_ms"])) == []
