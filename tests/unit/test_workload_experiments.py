"""bulk and web analyses on synthetic records (exact figures, no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from experiments import bulk, web


def iperf_report(bits: float, nbytes: int, host_cpu: float, remote_cpu: float) -> dict:
    return {"end": {"sum_received": {"bits_per_second": bits, "bytes": nbytes, "seconds": 2.0},
                    "sum_sent": {"bits_per_second": bits * 1.01, "retransmits": 3},
                    "cpu_utilization_percent": {"host_total": host_cpu,
                                                "remote_total": remote_cpu}}}


def test_bulk_summary_adds_proxy_cpu_to_the_application_s() -> None:
    row = bulk.summarise(iperf_report(8e8, 200_000_000, 50.0, 25.0),
                         {"client": 1.0, "server": 2.0}, {"client": 1.5, "server": 2.2},
                         [{"outcome": "encrypted", "tep": "tls"}])
    assert row["goodput_mbit"] == 800.0
    assert row["sender_app_cpu_s"] == 1.0 and row["receiver_app_cpu_s"] == 0.5
    assert row["sender_proxy_cpu_s"] == 0.5
    assert row["receiver_proxy_cpu_s"] == pytest.approx(0.2)
    assert row["sender_cpu_ns_per_byte"] == pytest.approx(1.5 / 200_000_000 * 1e9)
    assert row["outcomes"] == ["encrypted"] and row["teps"] == ["tls"]


def test_bulk_ratio_is_against_plain_on_the_same_path(tmp_path: Path) -> None:
    records = []
    for proto, mbit in (("plain", 800.0), ("tcpcrypt", 600.0), ("tls", 700.0)):
        records.append({"proto": proto, "rtt_ms": 20.0, "rate_mbit": 1000, "rep": 0,
                        "goodput_mbit": mbit, "retransmits": 0, "outcomes": ["encrypted"],
                        "sender_cpu_ns_per_byte": 1.0, "receiver_cpu_ns_per_byte": 2.0})
    (tmp_path / "records.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    out = bulk.analyse(tmp_path)
    summary = pd.read_csv(tmp_path / "bulk_summary.csv").set_index("proto")
    assert summary.loc["tcpcrypt", "ratio_vs_plain"] == 0.75
    assert out["min_encrypted_ratio"] == 0.75
    assert (tmp_path / "bulk.png").stat().st_size > 0
    assert any("| 20.00 | 1000 | tls | 700.00 | 0.88 |" in line
               for line in bulk.section(tmp_path, tmp_path.parent))


def test_web_added_ttfb_and_failed_fetches(tmp_path: Path) -> None:
    records = []
    for proto, ttfb in (("plain", 40.0), ("proxy-plain", 40.5), ("tls", 80.0)):
        for rep in range(3):
            records.append({"proto": proto, "rtt_ms": 20.0, "connections": 1, "rep": rep,
                            "page_ms": 100.0 + rep, "first_ttfb_ms": ttfb + rep,
                            "first_connect_ms": 0.3, "ok": not (proto == "tls" and rep == 2),
                            "outcomes": ["plaintext"]})
    (tmp_path / "records.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    out = web.analyse(tmp_path)
    assert out["proxy_ttfb_added_ms"] == 0.5 and out["failed_fetches"] == 1
    summary = pd.read_csv(tmp_path / "web_summary.csv").set_index("proto")
    assert summary.loc["tls", "ttfb_added_ms"] == 40.0 and summary.loc["tls", "ok"] == 2


def test_points_cover_every_arm() -> None:
    assert {p["proto"] for p in bulk.points("quick")} == set(bulk.ARMS)
    assert {p["proto"] for p in web.points("quick")} == set(web.ARMS)
