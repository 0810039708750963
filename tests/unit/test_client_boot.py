"""The experiments' client process starts with its imports and opens its first connection
only when released with a "go" line (testbed/workload.py CLIENT_BOOT)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

from testbed.workload import CLIENT_BOOT


def _client(stdin: str) -> subprocess.CompletedProcess[str]:
    with socket.socket() as probe:  # a local port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return subprocess.run([sys.executable, "-c", CLIENT_BOOT, "--server", "127.0.0.1",
                           "--port", str(port), "--proto", "plain", "--connections", "2"],
                          input=stdin, capture_output=True, text=True, timeout=60, check=False)


def test_a_client_never_released_exits_without_a_connection() -> None:
    done = _client("")
    assert done.returncode == 3 and done.stdout == ""


def test_a_released_client_runs_its_connections() -> None:
    done = _client("go\n")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["conn"] for r in records] == [0, 1]
    assert all("ConnectionRefusedError" in r["error"] for r in records)
