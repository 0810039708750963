"""Emulation tests: real namespaces, real kernel TCP. They need root."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from testbed.net.state import STATE_DIR, NetworkState, netns_inode, same_process


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/emulation" in str(item.fspath):
            item.add_marker(pytest.mark.emulation)


def namespaces() -> set[int]:
    """Every network namespace some process is in."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            inode = netns_inode(int(entry.name))
            if inode:
                found.add(inode)
    return found


def state_files(owner: int | None = None) -> set[Path]:
    """State files of networks made by process ``owner`` (default: by anyone)."""
    pattern = f"net-{owner}-*.json" if owner is not None else "net-*.json"
    return set(STATE_DIR.glob(pattern)) if STATE_DIR.is_dir() else set()


def _open_netns(pid: int, inode: int) -> int | None:
    """An fd on the network namespace of ``pid`` if it is ``inode``, else None."""
    try:
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        return None
    if os.fstat(fd).st_ino != inode:
        os.close(fd)
        return None
    return fd


@contextmanager
def held_namespaces(nodes: Iterable[dict[str, Any]]) -> Iterator[set[int]]:
    """Keep the namespaces of recorded hosts (state-file node entries) that still run
    allocated for the block, and yield their inode numbers. The kernel reuses a gone
    namespace's inode number at once, so a test that watches another process's namespaces
    disappear (``namespaces()``) would otherwise see one a parallel test makes meanwhile."""
    fds: dict[int, int] = {}
    try:
        for node in nodes:
            fd = _open_netns(node["pid"], node["netns"])
            if fd is None:
                continue
            if same_process(node["pid"], node["start"]):
                fds[node["netns"]] = fd
            else:  # the pid was reused before the open: not the recorded host
                os.close(fd)
        yield set(fds)
    finally:
        for fd in fds.values():
            os.close(fd)


CREATED: set[int] = set()  # namespaces made by Networks in this process
# An open fd on each of them until the test's check: the kernel reuses a gone namespace's
# inode number at once, so without it a namespace another test process (a parallel pytest
# worker) makes meanwhile could pass for one of ours that was left behind.
HELD: list[int] = []
NAMED: set[str] = set()  # named namespaces (`ip netns add`) tests in this process made


def named_namespaces() -> set[str]:
    run = Path("/run/netns")
    return {p.name for p in run.iterdir()} if run.is_dir() else set()


@pytest.fixture(autouse=True)
def needs_root_and_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every namespace a test's networks created is gone afterwards, failed test or not.

    Only this test's own namespaces are checked, so other users of the machine
    (parallel runs, other tools) do not make it flaky.
    """
    if os.geteuid() != 0:
        pytest.skip("emulation tests need root")
    original = NetworkState.add_node

    def recording(self: NetworkState, name: str, pid: int) -> None:
        original(self, name, pid)
        inode = self.nodes[name]["netns"]
        fd = _open_netns(pid, inode)
        if fd is not None:  # else the host died at once, its namespace with it
            HELD.append(fd)
            CREATED.add(inode)

    monkeypatch.setattr(NetworkState, "add_node", recording)
    CREATED.clear()
    NAMED.clear()
    # Only this process's state files: other runs on the machine come and go meanwhile.
    before_state = state_files(os.getpid())
    try:
        yield
        # A process still in one of them is a leak (the fds keep the inodes ours).
        left_ns = CREATED & namespaces()
    finally:
        while HELD:
            os.close(HELD.pop())
    left_state = state_files(os.getpid()) - before_state
    left_named = NAMED & named_namespaces()
    assert not left_named, f"test left named namespaces {sorted(left_named)}"
    assert not left_ns, f"test left {len(left_ns)} namespace(s) behind"
    assert not left_state, f"test left state files {left_state}"
