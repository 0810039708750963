"""testbed.net.hosts.wait_exit: Popen.wait(timeout) woken by the exit itself (a pidfd)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from testbed.net.hosts import wait_exit


def test_the_exit_code_of_a_process_that_exits() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(7)"])
    assert wait_exit(proc, 10) == 7
    assert proc.returncode == 7  # reaped: Popen knows it too


def test_a_process_already_reaped_answers_at_once() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert wait_exit(proc, 0) == 0


def test_a_process_still_running_after_the_timeout_raises_as_popen_does() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            wait_exit(proc, 0.05)
        assert proc.poll() is None
        proc.terminate()
        assert wait_exit(proc, 10) == -15  # killed by SIGTERM
    finally:
        proc.kill()
        proc.wait()
