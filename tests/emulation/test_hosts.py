"""Host holders (testbed/net/hosts.py): the forked holder and the mnexec fallback make the same
hosts, and stopping them removes every namespace."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from testbed.net.hosts import LAUNCHER, spawn_hosts
from testbed.net.state import _kill_and_wait, netns_inode, pids_in_netns
from tests.emulation.conftest import namespaces


@pytest.mark.parametrize("holder", ["nshold", "mnexec"])
def test_hosts_have_their_own_namespaces_and_go_with_stop(holder: str) -> None:
    if holder == "nshold" and not LAUNCHER.is_file():
        pytest.skip("tcpinc-nshold not built (make setup)")
    launcher = LAUNCHER if holder == "nshold" else Path("/nonexistent/tcpinc-nshold")
    hosts = spawn_hosts(["a", "b", "c"], launcher=launcher)
    # An fd on each namespace until the checks: the kernel reuses a gone namespace's inode
    # number at once, so a parallel test's new namespace could otherwise pass for ours.
    held = [os.open(f"/proc/{h.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            for h in hosts.nodes.values()]
    try:
        assert (hosts.launcher is not None) == (holder == "nshold")
        inodes = {netns_inode(h.pid) for h in hosts.nodes.values()}
        assert len(inodes) == 3 and netns_inode(1) not in inodes
        host = hosts.nodes["a"]
        # Its own sysfs (mount namespace): only its loopback, as in a Mininet host.
        assert host.execute(["ls", "/sys/class/net"]).split() == ["lo"]
        # A command left in the background does not hold cmd() up.
        assert host.cmd("sleep 30 & echo started").strip() == "started"
        mine = netns_inode(host.pid)
    finally:
        hosts.stop()
    # The background sleep (not a process the holders know) keeps a's namespace, as a process
    # a test leaves behind would: it is found and ended through the namespace, as `tcpinc
    # clean` does; the other two went with their holders.
    try:
        assert mine is not None and pids_in_netns(mine)
        _kill_and_wait(pids_in_netns(mine))
        assert not inodes & namespaces()
    finally:
        for fd in held:
            os.close(fd)


def test_holder_refuses_a_bad_count() -> None:
    if not LAUNCHER.is_file():
        pytest.skip("tcpinc-nshold not built (make setup)")
    for args in ([], ["0"], ["x"], ["--die-with-parent"], ["5000"]):
        done = subprocess.run([str(LAUNCHER), *args], capture_output=True, text=True, timeout=10)
        assert done.returncode == 2 and "usage: tcpinc-nshold" in done.stderr
