"""The substrate: addressing, routing, sysctls, teardown and `tcpinc clean`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

import topologies
from testbed.errors import ConfigError
from testbed.net import state as state_module
from testbed.net.network import NetConfig, Network
from testbed.net.state import NetworkState, clean_all, pids_in_netns
from tests.emulation.conftest import held_namespaces, namespaces


@pytest.mark.parametrize("name", ["direct", "middlebox", "chain", "fanin"])
def test_every_topology_routes_end_to_end(name):
    topo = topologies.create(name)
    with Network(topo) as net:
        for client in topo.clients:
            out = net.run(client, ["ping", "-c", "1", "-W", "2", net.ip("server")])
            assert "1 received" in out
        assert net.sysctls["server"]["net.ipv4.ip_forward"] == "0"
        for box in topo.middleboxes:
            assert net.sysctls[box]["net.ipv4.ip_forward"] == "1"


def test_sysctls_and_offloads_are_applied_and_recorded():
    cfg = NetConfig(tcp_fastopen=1, extra_sysctls={"net.ipv4.tcp_syn_retries": "3"})
    with Network(topologies.create("direct"), cfg) as net:
        assert net.sysctls["client"]["net.ipv4.tcp_fastopen"] == "1"
        assert net.sysctls["client"]["net.ipv4.tcp_syn_retries"] == "3"
        assert net.run("client", ["sysctl", "-n", "net.ipv4.tcp_syn_retries"]).strip() == "3"
        features = net.run("client", ["ethtool", "-k", net.intf("client")])
        assert "tcp-segmentation-offload: off" in features
        assert "generic-segmentation-offload: off" in features
        assert net.describe()["sysctls"]["client"]["net.ipv6.conf.all.disable_ipv6"] == "1"


def test_unknown_network_setting_is_refused():
    with pytest.raises(ConfigError, match="use_htb"):
        NetConfig.from_dict({"use_htb": True})


def test_teardown_after_exception_leaves_nothing():
    with pytest.raises(RuntimeError), Network(topologies.create("chain")) as net:
        mine = {node["netns"] for node in net.state.nodes.values()}
        assert len(mine & namespaces()) == 4
        net.start_helper("server", "sleeper", ["sleep", "60"])
        raise RuntimeError("boom")
    assert not mine & namespaces()


def test_teardown_kills_commands_abandoned_by_an_exception():
    """A one-shot command whose caller was interrupted (Ctrl-C, SIGTERM, a timeout above it)
    must not outlive the network."""
    with pytest.raises(KeyboardInterrupt), Network(topologies.create("direct")) as net:
        proc = net.popen("client", ["sleep", "60"])
        finished = net.popen("client", ["true"])
        finished.wait(timeout=5)
        raise KeyboardInterrupt
    assert proc.returncode == -signal.SIGKILL and finished.returncode == 0


def test_tcpinc_clean_after_killed_run(tmp_path, monkeypatch):
    """A run killed with SIGKILL: its recorded helpers and host shells die with it (parent-death
    signal), but a process it did not start itself (the `setsid sleep` in mb) keeps mb's
    namespace alive; `clean` finds it through the namespace and removes it."""
    script = (
        "import time, topologies\n"
        "from testbed.net.network import Network\n"
        "net = Network(topologies.create('middlebox')); net.start()\n"
        "net.start_helper('server', 'sleeper', ['sleep', '120'])\n"
        "net.nodes['mb'].cmd('setsid sleep 121 &')  # not recorded: found through its namespace\n"
        "print('up', flush=True); time.sleep(120)\n"
    )
    # A private state directory: parallel runs on the machine clean dead networks too, and
    # must not take this one from under the test (nor this clean theirs).
    private = tmp_path / "state"
    monkeypatch.setattr(state_module, "STATE_DIR", private)
    env = {**os.environ, "TCPINC_STATE_DIR": str(private)}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env=env)
    with ExitStack() as held:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
            new_state = set(private.glob(f"net-{proc.pid}-*.json"))
            assert len(new_state) == 1, "the killed run recorded its network"
            recorded = NetworkState.load(next(iter(new_state)))
            # Their inode numbers stay theirs (no parallel test's namespace takes one) while
            # this test watches them go.
            theirs = held.enter_context(held_namespaces(recorded.nodes.values()))
            assert theirs == {node["netns"] for node in recorded.nodes.values()}
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        _clean_the_killed_run(private, proc.pid, theirs, new_state)


def _clean_the_killed_run(private: Path, pid: int, theirs: set[int],
                          new_state: set[Path]) -> None:
    assert theirs & namespaces(), "the killed run left namespaces (that is the point)"
    # A report without "state" is the sweep of a parallel run's dead bpf probe pins.
    reports = [r for r in clean_all() if r.get("state") in {str(p) for p in new_state}]
    # At least the unrecorded sleeper; the others may already have died on their own.
    assert reports and reports[0]["processes"] >= 1
    assert reports[0]["namespaces"] >= 1
    deadline = time.monotonic() + 3
    while theirs & namespaces() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not theirs & namespaces()
    assert not set(private.glob(f"net-{pid}-*.json"))
    assert private.is_dir()


def test_clean_skips_networks_whose_owner_runs(tmp_path, monkeypatch):
    # A private state directory: a clean of the machine's directory would also finish other
    # runs' dead networks, which parallel tests are watching (test_eno_bpf, test_faults).
    monkeypatch.setattr(state_module, "STATE_DIR", tmp_path / "state")
    with Network(topologies.create("direct")) as net:
        reports = clean_all()
        mine = [r for r in reports if r.get("state") == str(net.state.path)]
        assert mine and mine[0]["skipped"]
        inode = net.state.nodes["client"]["netns"]
        assert pids_in_netns(inode), "the running network is untouched"
