"""CLI: bad input is one line on stderr with exit code 2, nothing half-built."""

from __future__ import annotations

import subprocess
import sys

import pytest

from testbed import cli
from testbed.net import network


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["probe", "--topology", "ring"], "unknown topology 'ring'"),
        (["probe", "--rtt=-5ms"], "negative time"),
        (["probe", "--loss", "150%"], "outside 0-100"),
        (["probe", "--rate", "0mbit"], "rate must be positive"),
        (["probe", "--proto", "quic"], "unknown protocol 'quic'"),
        (["probe", "--middlebox", "nosuchbox"], "unknown middlebox 'nosuchbox'"),
        (["probe", "--middlebox", "passthrough:colour=red"], "no parameter"),
        (["probe", "--topology", "direct", "--middlebox", "passthrough"], "no middlebox node"),
        (["probe", "--repeat", "0"], "--repeat must be >= 1"),
        (["run", "nosuchexperiment"], "unknown experiment"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, needle, capsys, monkeypatch):
    # Never let a test reach a real network: building one would be a bug here.
    monkeypatch.setattr(network.Network, "start", _no_network)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err
    assert len(err.splitlines()) == 1


def _no_network(self):  # pragma: no cover - only reached on a bug
    raise AssertionError("a network was started for invalid input")


def test_not_root_and_missing_binaries(capsys, monkeypatch):
    monkeypatch.setattr(network.os, "geteuid", lambda: 1000)
    assert cli.main(["probe"]) == 2
    assert "need root" in capsys.readouterr().err
    monkeypatch.setattr(network.os, "geteuid", lambda: 0)
    real_which = network.shutil.which
    monkeypatch.setattr(network.shutil, "which",
                        lambda b: None if b == "mnexec" else real_which(b))
    assert cli.main(["probe"]) == 2
    err = capsys.readouterr().err
    assert "mnexec" in err and "make setup" in err


def test_argparse_errors_exit_2():
    proc = subprocess.run([sys.executable, "-m", "testbed", "probe", "--link-backend", "x"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr


def test_listings(capsys):
    assert cli.main(["topologies"]) == 0
    out = capsys.readouterr().out
    for name in ("direct", "middlebox", "chain", "fanin"):
        assert name in out
    assert cli.main(["middleboxes"]) == 0
    assert "passthrough" in capsys.readouterr().out
