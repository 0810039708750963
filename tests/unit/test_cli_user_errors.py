"""Bad command lines found by trying the CLI as an adversarial user: each is one line on
stderr naming the problem and the fix, exit code 2, and nothing is built or written."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from testbed import cli
from testbed.errors import KernelFeatureError
from testbed.net import network
from topologies import create


def _no_network(self: network.Network) -> None:  # pragma: no cover - only reached on a bug
    raise AssertionError("a network was started for invalid input")


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture
def guarded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No network may start; temporary directories land in a directory we can inspect."""
    monkeypatch.setattr(network.Network, "start", _no_network)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return tmp_path


def _refused(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str],
             where: Path) -> None:
    before = _tree(where)
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert needle in err and "(fix: " in err, err
    assert len(err.splitlines()) == 1 and captured.out == ""
    assert _tree(where) == before, "something was written"


@pytest.mark.parametrize("argv,needle", [
    (["probe", "--rtt", "99999999ms"], "--rtt 99999999ms is longer than 10 s"),
    (["probe", "--jitter", "20s"], "--jitter 20s is longer than 10 s"),
    (["probe", "--response-size", "-1"], "--response-size -1 is out of range"),
    (["probe", "--response-size", "0"], "--response-size 0 is out of range"),
    (["probe", "--middlebox", "tamper:rate=5"], "rate=5.0 is out of range"),
    (["probe", "--middlebox", "tamper:rate=-1"], "rate=-1.0 is out of range"),
    (["probe", "--middlebox", "tamper:direction=sideways"], "direction='sideways'"),
    (["probe", "--middlebox", "resegment:split=0,coalesce=no"], "changes nothing"),
    (["probe", "--pcap-dir", "/proc/self/pcaps"], "cannot write in /proc/self"),
    (["run", "latency", "--out", "/proc/self/results"], "cannot write in /proc/self"),
    (["run", "latency", "--protocols", "nosuch"], "--protocols: nosuch not run by latency"),
    (["run", "latency", "--run-id", "/tmp/elsewhere"], "is not a plain name"),
    (["run", "latency", "--run-id", ".."], "is not a plain name"),
    (["analyse", "/nonexistent/run"], "no such directory"),
])
def test_bad_lines_are_refused_before_anything_is_made(
        argv: list[str], needle: str, capsys: pytest.CaptureFixture[str], guarded: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(guarded)  # `run` writes under ./results by default
    _refused(argv, needle, capsys, guarded)


def test_output_paths_that_are_files_are_refused(capsys: pytest.CaptureFixture[str],
                                                 guarded: Path) -> None:
    afile = guarded / "afile"
    afile.write_text("x")
    _refused(["probe", "--pcap-dir", str(afile / "sub")], "is not a directory", capsys, guarded)
    _refused(["run", "latency", "--out", str(afile)], "is not a directory", capsys, guarded)


def _fake_run(path: Path, experiment: str = "latency", profile: str = "quick") -> Path:
    path.mkdir(parents=True)
    (path / "metadata.json").write_text(json.dumps(
        {"experiment": experiment, "arguments": {"profile": profile}}))
    return path


def test_merge_and_analyse_refuse_what_is_not_a_run(capsys: pytest.CaptureFixture[str],
                                                    guarded: Path) -> None:
    run = _fake_run(guarded / "runs" / "a")
    other = _fake_run(guarded / "runs" / "b", experiment="loss")
    plain = guarded / "plain"
    plain.mkdir()
    (guarded / "garbage").mkdir()
    (guarded / "garbage" / "metadata.json").write_text("{not json")
    out = str(guarded / "merged")
    _refused(["merge", str(run), str(plain), "--out", out], "is not a run directory", capsys,
             guarded)
    _refused(["merge", str(run), str(guarded / "missing"), "--out", out], "no such directory",
             capsys, guarded)
    _refused(["merge", str(run), str(guarded / "garbage"), "--out", out],
             "is not a run directory", capsys, guarded)
    _refused(["merge", str(run), str(other), "--out", out], "cannot merge runs", capsys,
             guarded)
    _refused(["analyse", str(plain)], "is not a run directory", capsys, guarded)
    _fake_run(guarded / "runs" / "c", experiment="nosuch")
    _refused(["analyse", str(guarded / "runs" / "c")], "unknown experiment", capsys, guarded)


def test_not_root_leaves_no_work_or_run_directory(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(network.os, "geteuid", lambda: 1000)
    with pytest.raises(KernelFeatureError, match="need root"):
        network.Network(create("direct")).start()
    out = tmp_path / "results"
    assert cli.main(["run", "latency", "--out", str(out)]) == 2
    assert "need root" in capsys.readouterr().err
    assert _tree(tmp_path) == [], "a refused start left a directory"


def test_probe_prints_the_records_it_has_when_a_helper_died(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from testbed import probe

    died = "eno-hook:client in client exited (-9)"
    records = [{"conn": 0, "bytes_ok": True, "helper_failure": died},
               {"conn": 1, "bytes_ok": False, "helper_failure": died,
                "error": f"helper died during the run: {died}"}]
    monkeypatch.setattr(probe, "probe", lambda cfg: records)
    assert cli.main(["probe", "--proto", "eno-test", "--repeat", "2"]) == 1
    captured = capsys.readouterr()
    assert [json.loads(line)["conn"] for line in captured.out.splitlines()] == [0, 1]
    (line,) = captured.err.splitlines()
    assert died in line and "1 of 2 connection records above completed" in line
