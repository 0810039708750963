"""Emulation tests: real namespaces, real kernel TCP. They need root."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.net.state import STATE_DIR, NetworkState, netns_inode


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


CREATED: set[int] = set()  # namespaces made by Networks in this process
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
        CREATED.add(self.nodes[name]["netns"])

    monkeypatch.setattr(NetworkState, "add_node", recording)
    CREATED.clear()
    NAMED.clear()
    # Only this process's state files: other runs on the machine come and go meanwhile.
    before_state = state_files(os.getpid())
    yield
    left_ns = CREATED & namespaces()
    left_state = state_files(os.getpid()) - before_state
    left_named = NAMED & named_namespaces()
    assert not left_named, f"test left named namespaces {sorted(left_named)}"
    assert not left_ns, f"test left {len(left_ns)} namespace(s) behind"
    assert not left_state, f"test left state files {left_state}"
