"""`tcpinc compare`: per-point median differences of two runs and their noisy verdicts, on
small run directories written here."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from experiments.compare import compare_runs, format_comparison
from testbed.errors import ConfigError


def write_run(path: Path, points: dict[tuple[str, int], list[float]], noisy: bool | None = False,
              experiment: str = "latency", profile: str = "quick",
              extra: list[dict[str, Any]] | None = None, seed: int = 1) -> Path:
    """A run directory: per (proto, rtt) point a warm-up of 999 ms and connections with the
    given TTFBs (protocol latency 1 ms below each)."""
    path.mkdir(parents=True)
    meta: dict[str, Any] = {"experiment": experiment, "arguments": {"profile": profile},
                            "seed": seed, "git_commit": "abc"}
    if noisy is not None:
        meta["fidelity"] = {"noisy": noisy, "reasons": ["plain TCP +2.00 ms"] if noisy else []}
    (path / "metadata.json").write_text(json.dumps(meta))
    marks, records = [], []
    for (proto, rtt), ttfbs in points.items():
        marks.append(json.dumps({"proto": proto, "rtt_ms": rtt}, sort_keys=True))
        base = {"proto": proto, "rtt_ms": rtt, "bytes_ok": True, "split_error": None}
        records.append({**base, "conn": 0, "warmup": True, "ttfb_ms": 999.0,
                        "protocol_latency_ms": 998.0})
        records += [{**base, "conn": i + 1, "warmup": False, "ttfb_ms": t,
                     "protocol_latency_ms": t - 1.0} for i, t in enumerate(ttfbs)]
    records += extra or []
    (path / "points.jsonl").write_text("".join(m + "\n" for m in marks))
    (path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


A_POINTS = {("plain", 10): [20.0, 21.0, 22.0], ("tls", 10): [33.0, 34.0, 35.0, 36.0]}


def test_a_rerun_within_two_percent_with_the_same_verdict_repeats(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", A_POINTS)
    b = write_run(tmp_path / "b", {("plain", 10): [21.4, 21.4, 20.0],  # median +0.4 ms
                                   ("tls", 10): [33.5, 34.5, 35.0, 36.0]})  # 34.5 -> 34.75
    result = compare_runs(a, b)
    rows = {r["point"]: r for r in result["points"]}
    assert rows["proto=plain rtt_ms=10"]["median_a_ms"] == 21.0  # the warm-up left out
    assert rows["proto=plain rtt_ms=10"]["diff_ms"] == pytest.approx(0.4)
    assert rows["proto=plain rtt_ms=10"]["diff_pct"] == pytest.approx(0.4 / 21.0 * 100)
    assert rows["proto=tls rtt_ms=10"]["median_a_ms"] == 34.5  # median of an even count
    assert rows["proto=tls rtt_ms=10"]["diff_pct"] == pytest.approx(0.25 / 34.5 * 100)
    assert rows["proto=tls rtt_ms=10"]["latency_diff_ms"] == pytest.approx(0.25)
    assert result["within"] == 2 and result["repeats"]
    text = format_comparison(result)
    assert "rerun repeats: 2/2 points within 2 %" in text
    assert "noisy: A no, B no (same verdict)" in text


def test_a_point_beyond_the_tolerance_fails_the_rerun(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", A_POINTS)
    b = write_run(tmp_path / "b", {("plain", 10): [21.7, 21.7, 21.7],  # +3.33 %
                                   ("tls", 10): [33.0, 34.0, 35.0, 36.0]})
    result = compare_runs(a, b)
    assert result["within"] == 1 and not result["repeats"]
    assert result["max_abs_diff_pct"] == pytest.approx(0.7 / 21.0 * 100)
    line = next(x for x in format_comparison(result).splitlines()
                if x.startswith("proto=plain"))
    assert "+3.33" in line and "NO" in line
    assert compare_runs(a, b, tolerance_pct=4.0)["repeats"]


def test_a_different_noisy_verdict_fails_the_rerun_and_says_why(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", A_POINTS)
    b = write_run(tmp_path / "b", A_POINTS, noisy=True)
    result = compare_runs(a, b)
    assert result["within"] == 2 and not result["repeats"]
    text = format_comparison(result)
    assert "noisy: A no, B yes (DIFFERENT verdicts)" in text
    assert "B: plain TCP +2.00 ms" in text


def test_runs_without_a_fidelity_check_compare_on_medians_alone(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", A_POINTS, noisy=None, experiment="datapath")
    b = write_run(tmp_path / "b", A_POINTS, noisy=None, experiment="datapath")
    result = compare_runs(a, b)
    assert result["repeats"] and not result["verdicts"]["checked"]
    assert "noisy: not checked" in format_comparison(result)


def test_failed_warmup_and_unresumed_connections_do_not_count(tmp_path: Path) -> None:
    extra = [{"proto": "plain", "rtt_ms": 10, "conn": 9, "warmup": False, "bytes_ok": False,
              "ttfb_ms": 500.0},
             {"proto": "tls-0rtt", "rtt_ms": 10, "conn": 1, "warmup": False, "bytes_ok": True,
              "resumed": False, "ttfb_ms": 300.0},
             {"proto": "tls-0rtt", "rtt_ms": 10, "conn": 2, "warmup": False, "bytes_ok": True,
              "resumed": True, "ttfb_ms": 23.0}]
    a = write_run(tmp_path / "a", A_POINTS, extra=extra)
    rows = {r["point"]: r for r in compare_runs(a, a)["points"]}
    assert rows["proto=plain rtt_ms=10"]["n_a"] == 3
    assert rows["proto=tls-0rtt rtt_ms=10"]["median_a_ms"] == 23.0


def test_a_point_missing_from_one_run_fails_it(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", A_POINTS)
    b = write_run(tmp_path / "b", {("plain", 10): [20.0, 21.0, 22.0]})
    result = compare_runs(a, b)
    (missing,) = [r for r in result["points"] if r["point"] == "proto=tls rtt_ms=10"]
    assert not missing["within"] and missing["why"] == "no completed connection in B"
    assert not result["repeats"]
    assert "NO (no completed connection in B)" in format_comparison(result)


def test_header_says_what_differs_between_the_runs(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", A_POINTS)
    b = write_run(tmp_path / "b", A_POINTS, seed=7)
    text = format_comparison(compare_runs(a, b))
    assert "  seed: A 1  B 7   <- differs" in text
    assert "  git_commit: A abc  B abc\n" in text


@pytest.mark.parametrize("make_b, words", [
    (lambda p: write_run(p, A_POINTS, profile="full"), "profile"),
    (lambda p: write_run(p, A_POINTS, experiment="datapath"), "experiment"),
    (lambda p: p, "no such directory"),
])
def test_runs_that_cannot_be_compared_are_refused(tmp_path: Path, make_b: Any,
                                                  words: str) -> None:
    a = write_run(tmp_path / "a", A_POINTS)
    with pytest.raises(ConfigError, match=words):
        compare_runs(a, make_b(tmp_path / "b"))


def test_damaged_or_timeless_runs_are_refused_in_one_line(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", A_POINTS)
    b = write_run(tmp_path / "b", A_POINTS)
    with (b / "records.jsonl").open("a") as out:
        out.write('{"proto": "plain", "rtt_ms": 10, "ttfb_ms": 2')  # truncated
    with pytest.raises(ConfigError, match="records.jsonl line 10 is not JSON"):
        compare_runs(a, b)
    c = tmp_path / "c"
    c.mkdir()
    (c / "metadata.json").write_text(json.dumps({"experiment": "latency",
                                                 "arguments": {"profile": "quick"}}))
    (c / "points.jsonl").write_text('{"proto": "plain", "middlebox": "x"}\n')
    (c / "records.jsonl").write_text('{"proto": "plain", "middlebox": "x", "outcome": "ok"}\n')
    with pytest.raises(ConfigError, match="no TTFB per connection"):
        compare_runs(a, c)
    with pytest.raises(ConfigError, match="above 0 %"):
        compare_runs(a, a, tolerance_pct=0)


def test_cli_exit_status_says_whether_the_rerun_repeats(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    from testbed.cli import main

    a = write_run(tmp_path / "a", A_POINTS)
    b = write_run(tmp_path / "b", A_POINTS, noisy=True)
    assert main(["compare", str(a), str(a)]) == 0
    assert "rerun repeats: 2/2" in capsys.readouterr().out
    assert main(["compare", str(a), str(b), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["verdicts"]["noisy_b"] is True
    proc = subprocess.run([".venv/bin/tcpinc", "compare", str(a), str(tmp_path / "nope")],
                          capture_output=True, text=True, check=False,
                          cwd=Path(__file__).parents[2])
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "no such directory" in proc.stderr
