"""`tcpinc clean` never sweeps a namespace inode that a running network holds now.

Namespace inodes are reused by the kernel once a namespace is gone, so a dead run's
recorded inode may name a live network's host by the time `clean` runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from testbed.net import state as state_module
from testbed.net.state import NetworkState, clean_all, proc_start_time


def _state(directory: Path, name: str, owner: int, owner_start: int | None,
           nodes: dict[str, dict[str, object]]) -> NetworkState:
    state = NetworkState(path=directory / f"net-{name}.json", owner_pid=owner,
                         owner_start=owner_start, nodes=nodes)
    state.save()
    return state


@pytest.fixture
def swept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[list[int]], dict]:
    monkeypatch.setattr(state_module, "STATE_DIR", tmp_path)
    monkeypatch.setattr("testbed.eno.bpf.attach.sweep_probes", lambda: [])
    killed: list[list[int]] = []
    members: dict[int, list[int]] = {}
    monkeypatch.setattr(state_module, "_kill_and_wait",
                        lambda pids, timeout=2.0: killed.append(pids))
    monkeypatch.setattr(state_module, "pids_in_netns", lambda inode: members.get(inode, []))
    return tmp_path, killed, members


def test_a_dead_runs_inode_reused_by_a_live_network_is_not_swept(swept) -> None:
    directory, killed, members = swept
    me, start = os.getpid(), proc_start_time(os.getpid())
    reused, orphaned = 4026532999, 4026532998
    members[reused] = [111111]  # the live network's host now holds this inode
    members[orphaned] = [222222]  # a dead run's leftover process
    _state(directory, "live", me, start, {"client": {"pid": me, "start": start, "netns": reused}})
    _state(directory, "dead", 999999, 1, {
        "client": {"pid": 999999, "start": 1, "netns": reused},
        "server": {"pid": 999998, "start": 1, "netns": orphaned},
    })
    reports = {Path(r["state"]).stem: r for r in clean_all() if "state" in r}
    assert reports["net-live"]["skipped"] == "owner process still running"
    assert reports["net-dead"]["reused_namespaces"] == [reused]
    assert reports["net-dead"]["namespaces"] == 1
    assert [222222] in killed and [111111] not in killed
    assert not (directory / "net-dead.json").exists() and (directory / "net-live.json").exists()


def test_force_sweeps_every_recorded_namespace(swept) -> None:
    directory, killed, members = swept
    me, start = os.getpid(), proc_start_time(os.getpid())
    members[4026532997] = [333333]
    _state(directory, "live", me, start, {"client": {"pid": me, "start": start,
                                                     "netns": 4026532997}})
    reports = clean_all(force=True)
    assert [333333] in killed
    assert reports[-1]["namespaces"] == 1
