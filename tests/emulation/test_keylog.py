"""Key logs end to end: `tcpinc probe --keylog` writes them next to the capture, and the
Wireshark dissector (tools/wireshark/tcpinc.lua) decrypts that capture with them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from testbed.apps.wire import encode_request

LUA = Path(__file__).resolve().parents[2] / "tools" / "wireshark" / "tcpinc.lua"


def probe(*args: str) -> list[dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-m", "testbed", "probe", "--rtt", "2ms",
                           "--response-size", "64", *args],
                          capture_output=True, text=True, check=False, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


def decrypted(pcap: Path, field: str, *prefs: str) -> set[bytes]:
    proc = subprocess.run(["tshark", "-n", "-X", f"lua_script:{LUA}", "-r", str(pcap),
                           *prefs, "-T", "fields", "-e", field],
                          capture_output=True, text=True, check=True, timeout=60)
    return {bytes.fromhex(v) for line in proc.stdout.split() for v in line.split(",") if v}


def test_probe_keylog_decrypts_tcpcrypt(tmp_path: Path) -> None:
    records = probe("--proto", "tcpcrypt", "--pcap-dir", str(tmp_path), "--keylog")
    keylog = tmp_path / "probe-tcpcrypt.tcpcrypt-keylog"
    lines = [line.split() for line in keylog.read_text().splitlines()]
    assert len(lines) == 2 and keylog.stat().st_mode & 0o777 == 0o600
    assert {line[1] for line in lines} == {records[0]["session_id"]}
    assert not (tmp_path / "probe-tcpcrypt.sslkeylog").exists()
    plain = decrypted(tmp_path / "probe-tcpcrypt.pcap", "tcpcrypt.data",
                      "-o", f"tcpcrypt.keylog_file:{keylog}")
    assert encode_request(records[0]["conn"], 64, 12) in plain


@pytest.mark.parametrize("arm", [("tls",), ("tls-noeno", "--tfo")])
def test_probe_keylog_decrypts_tls(tmp_path: Path, arm: tuple[str, ...]) -> None:
    records = probe("--proto", *arm, "--pcap-dir", str(tmp_path), "--keylog")
    name = records[0]["proto"]
    keylog = tmp_path / f"probe-{name}.sslkeylog"
    assert "CLIENT_TRAFFIC_SECRET_0 " in keylog.read_text()
    plain = decrypted(tmp_path / f"probe-{name}.pcap", "data.data",
                      "-o", f"tls.keylog_file:{keylog}")
    assert encode_request(records[0]["conn"], 64, 12) in plain


def test_probe_without_keylog_writes_none(tmp_path: Path) -> None:
    probe("--proto", "tls", "--pcap-dir", str(tmp_path))
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".pcap", ".pcap"]
