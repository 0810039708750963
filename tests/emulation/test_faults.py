"""Faults found by killing helpers and runs: what survives, and what cleans itself up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import topologies
from testbed import workload
from testbed.net.network import Network
from testbed.net.state import NetworkState, clean_state, pids_in_netns, same_process
from testbed.workload import Workload, run_workload
from tests.emulation.conftest import held_namespaces


def test_a_hook_that_dies_mid_run_keeps_the_records(monkeypatch: pytest.MonkeyPatch) -> None:
    real_finish = workload.finish_hook

    def finish_then_kill_on_client(net: Network, node: str, proc: Any, *args: Any) -> Any:
        done = real_finish(net, node, proc, *args)
        if node == "client":  # dies after its rules are in, before the first connection
            proc.kill()
            proc.wait()
        return done

    monkeypatch.setattr(workload, "finish_hook", finish_then_kill_on_client)
    with Network(topologies.create("direct")) as net:
        records = run_workload(net, Workload(proto="eno-test", connections=2, timeout_s=5,
                                             eno_datapath="nfqueue"))
    assert len(records) == 2
    for record in records:
        assert "eno-hook:client" in record["helper_failure"], record
        if not record["bytes_ok"]:  # an unfinished connection says why
            assert "helper died during the run" in record["error"], record


def _state_of(state_dir: Path, pid: int, deadline: float) -> Path:
    """The state file of the network made by ``pid`` once it records the ENO hooks."""
    while time.monotonic() < deadline:
        for path in state_dir.glob(f"net-{pid}-*.json"):
            try:
                state = NetworkState.load(path)
            except (json.JSONDecodeError, TypeError):
                continue  # being rewritten
            if sum("testbed.eno.hook" in " ".join(p["argv"]) for p in state.procs) == 2:
                return path
        time.sleep(0.1)
    raise AssertionError(f"no network with two hooks from pid {pid}")


def test_helpers_of_a_killed_run_exit_on_their_own_and_clean_removes_the_rest(
        tmp_path: Path) -> None:
    # A private state directory: a parallel run's `clean` must not take this network away.
    private = tmp_path / "state"
    env = {**os.environ, "TCPINC_STATE_DIR": str(private)}
    run = subprocess.Popen([sys.executable, "-m", "testbed", "probe", "--proto", "eno-test",
                            "--rtt", "100ms", "--repeat", "200", "--eno-datapath", "nfqueue"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    state_path: Path | None = None
    try:
        state_path = _state_of(private, run.pid, time.monotonic() + 60)
        state = NetworkState.load(state_path)
        # Their inode numbers stay theirs (no parallel test's namespace takes one) while
        # this test watches them go.
        with held_namespaces(state.nodes.values()) as inodes:
            assert inodes == {n["netns"] for n in state.nodes.values()}
            run.send_signal(signal.SIGKILL)
            run.wait()
            _check_killed_run(state)
        state_path = None
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        if state_path is not None and state_path.exists():
            clean_state(NetworkState.load(state_path))


def _check_killed_run(state: NetworkState) -> None:
    """Every helper and host of the killed run exits on its own; its clean removes the rest."""
    assert state.workdir is not None and Path(state.workdir).is_dir()
    # Nobody cleans yet: the kernel's parent-death signal stops every helper.
    deadline = time.monotonic() + 30
    alive = state.procs
    while alive and time.monotonic() < deadline:
        alive = [p for p in state.procs if same_process(p["pid"], p["start"])]
        time.sleep(0.1)
    assert not alive, f"helpers outlived their run: {[p['argv'] for p in alive]}"
    holders = list(state.nodes.values())  # each host's shell holds its namespace
    while holders and time.monotonic() < deadline:
        holders = [n for n in holders if same_process(n["pid"], n["start"])]
        time.sleep(0.1)
    assert not holders, f"{len(holders)} host namespace(s) outlived their run"
    inodes = {n["netns"] for n in state.nodes.values()}
    while time.monotonic() < deadline and any(pids_in_netns(i) for i in inodes):
        time.sleep(0.1)
    left = {i: pids_in_netns(i) for i in inodes}
    assert not any(left.values()), f"processes keep the run's namespaces: {left}"
    # What is left (the state file, the work directory) goes with this run's clean.
    report = clean_state(state)
    assert report["workdir"] == state.workdir and not Path(state.workdir).exists()
    assert report["processes"] == report["namespaces"] == 0, report
    assert not os.path.exists(str(state.path))
