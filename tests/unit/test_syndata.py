"""The syndata experiment's analysis and report section on synthetic records (no network)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments import syndata


def _records(ttfb: dict[str, float]) -> list[dict[str, Any]]:
    out = []
    for proto, ms in ttfb.items():
        for conn in range(3):
            out.append({"proto": proto, "conn": conn, "warmup": conn == 0, "bytes_ok": True,
                        "resumed": True, "ttfb_ms": ms + conn, "pcap": None,
                        "variant_label": "beyond" if proto.endswith("-syn") else None})
    return out


def test_each_syn_arm_is_set_against_its_twin(tmp_path: Path) -> None:
    ttfb = {p: 300.0 for p in syndata.ARMS}
    ttfb.update({"tcpcrypt-syn": 201.0, "tls-syn": 195.0, "tls-0rtt": 200.0,
                 "tls-0rtt-syn": 100.5})
    table = syndata.summarise(_records(ttfb), tmp_path).set_index("proto")
    # Medians of the two measured connections (the warm-up is left out): ms + 1.5.
    assert table.loc["tcpcrypt-syn", "twin"] == "tcpcrypt"
    assert table.loc["tcpcrypt-syn", "saved_ms"] == 99.0
    assert bool(table.loc["tcpcrypt-syn", "one_rtt_saved"])  # 99 within 100 +- 2
    assert not bool(table.loc["tls-syn", "one_rtt_saved"])  # 105 saved: outside
    assert table.loc["tls-0rtt-syn", "saved_ms"] == 99.5
    assert table.loc["tcpcrypt", "twin"] != table.loc["tcpcrypt", "twin"]  # NaN: no twin
    # No capture, no count: the row says it does not agree rather than guessing.
    assert not table["agrees"].any() and table.loc["tls", "n"] == 2


def test_the_report_section_says_when_nothing_ran(tmp_path: Path) -> None:
    text = "\n".join(syndata.section(None, tmp_path))
    assert "Not run yet (`tcpinc run syndata`)" in text


def test_the_report_section_tables_the_run_and_draws_the_ladders(tmp_path: Path) -> None:
    run = tmp_path / "syndata" / "RUN"
    run.mkdir(parents=True)
    ttfb = {p: 300.0 for p in syndata.ARMS}
    syndata.summarise(_records(ttfb), run).to_csv(run / "syndata.csv", index=False)
    (run / "replay.csv").write_text(
        "proto,client_ok,requests_delivered,distinct_requests,replayed_delivered,"
        "server_connections,claims_protection\ntls-0rtt-syn,8,8,8,0,15,True\n")
    text = "\n".join(syndata.section(run, tmp_path))
    assert "| `tcpcrypt-syn` | 301.5 ms | 200.0 ms | - | 1 / 2 | 0.0 ms vs `tcpcrypt` |" in text
    assert "- `tls-0rtt-syn`: 0 replayed requests delivered of 8 requests" in text
    assert "beyond RFC 8548" in text
    for arm, _ in syndata.LADDER_ARMS:
        assert (tmp_path / "ladders" / f"{arm}.png").stat().st_size > 0
