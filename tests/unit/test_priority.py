"""Tests for the endpoints' scheduling priority (testbed/apps/priority.py) and its flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from testbed.apps import client, server
from testbed.apps.priority import current_policy, raise_priority, raise_process


def test_zero_leaves_the_policy_and_out_of_range_is_refused() -> None:
    before = current_policy()
    assert raise_priority(0) == before
    with pytest.raises(ValueError, match="outside 1..99"):
        raise_priority(100)
    assert current_policy() == before


def test_fifo_reaches_threads_started_afterwards() -> None:
    # In a child process: the test process keeps its own policy.
    code = textwrap.dedent("""
        import json, os, threading
        from testbed.apps.priority import current_policy, raise_priority, raise_process
        got = raise_priority(5)
        seen = []
        t = threading.Thread(target=lambda: seen.append(current_policy()))
        t.start(); t.join()
        print(json.dumps([got, seen[0]]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    got, thread = json.loads(out)
    if os.geteuid() == 0:
        assert got == thread == "SCHED_FIFO:5"
    else:  # refused: the process says so and keeps its policy
        assert got.startswith("SCHED_OTHER (SCHED_FIFO:5: ") and thread == "SCHED_OTHER"


@pytest.mark.parametrize("main", [client.main, server.main])
def test_apps_refuse_a_priority_out_of_range(main, capsys) -> None:
    argv = ["--rt-priority", "100"] + (["--server", "127.0.0.1"] if main is client.main else [])
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "--rt-priority must be 0 (off) .. 99" in capsys.readouterr().err


def test_another_processs_threads_are_raised() -> None:
    code = "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); " \
           "print('up', flush=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "up"
        got = raise_process(child.pid, 5)
        tids = os.listdir(f"/proc/{child.pid}/task")
        policies = {os.sched_getscheduler(int(t)) for t in tids}
        if os.geteuid() == 0:
            assert got == "SCHED_FIFO:5" and len(tids) == 2 and policies == {os.SCHED_FIFO}
        else:
            assert got.startswith("unchanged (SCHED_FIFO:5: ")
    finally:
        child.kill()
        child.wait()
    assert raise_process(child.pid, 5) == f"gone (pid {child.pid})"
