"""The ENO hook's rules in a real host: one iptables-restore transaction installs exactly the
rules the commands of ``install_commands`` make one at a time, and removal leaves the table
as it was, after a clean install, a half-made one or a failed one (testbed/eno/rules.py)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import topologies
from testbed.eno import rules
from testbed.eno.rules import HookSpec, install_commands, install_rules, remove_rules
from testbed.errors import CommandError
from testbed.net.network import Network

NODE = "client"
# A rule of someone else's in the same table: installs and removals leave it alone.
OTHER = ["iptables", "-w", "-t", "mangle", "-A", "OUTPUT", "-p", "udp", "-j", "ACCEPT"]


def saved(net: Network) -> list[str]:
    """The host's mangle table as iptables-save writes it, without comments and counters."""
    text = net.run(NODE, ["iptables-save", "-t", "mangle"])
    return [re.sub(r" \[\d+:\d+\]$", "", line) for line in text.splitlines()
            if not line.startswith("#")]


@contextmanager
def counted_runs(net: Network, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[str]]]:
    """The commands the block runs in hosts of ``net``."""
    runs: list[list[str]] = []
    original = net.run

    def run(node: str, argv: list[str], timeout: float = 30.0) -> str:
        runs.append(argv)
        return original(node, argv, timeout)

    with monkeypatch.context() as patch:
        patch.setattr(net, "run", run)
        yield runs


@pytest.mark.parametrize("spec", [HookSpec(), HookSpec(queue=3, exclude_ports=(5001, 5002))])
def test_one_transaction_installs_what_the_commands_one_by_one_install(spec, monkeypatch):
    with Network(topologies.create("direct")) as net:
        net.run(NODE, OTHER)
        before = saved(net)
        assert "-A OUTPUT -p udp -j ACCEPT" in before
        for cmd in install_commands(spec):  # the rules one command at a time
            net.run(NODE, cmd)
        one_by_one = saved(net)
        remove_rules(net, NODE)
        assert saved(net) == before
        with counted_runs(net, monkeypatch) as runs:
            install_rules(net, NODE, spec)
        assert [argv[0] for argv in runs] == ["iptables-restore"]
        batch = saved(net)
        with counted_runs(net, monkeypatch) as runs:
            remove_rules(net, NODE)
        assert [argv[0] for argv in runs] == ["iptables", "iptables-restore"]
        after = saved(net)
    assert batch == one_by_one
    chains = ("TCPINC_ENO_HOLD", "TCPINC_ENO_RELEASE", "TCPINC_ENO_OUT", "TCPINC_ENO_IN")
    assert all(f":{chain} -" in batch for chain in chains)
    assert len(batch) == len(before) + len(chains) + 14  # rules: hold 1, release 1, 2 x 6
    assert after == before


def test_removal_leaves_nothing_after_a_half_made_or_a_failed_install(monkeypatch):
    spec = HookSpec()
    with Network(topologies.create("direct")) as net:
        net.run(NODE, OTHER)
        before = saved(net)
        # Half made, as the rules one command at a time left it when stopped midway.
        for cmd in install_commands(spec)[:9]:
            net.run(NODE, cmd)
        assert saved(net) != before
        remove_rules(net, NODE)
        half_removed = saved(net)
        # The transaction fails on its last line: nothing of it stays.
        bad = [*rules.IPTABLES, "-A", "TCPINC_ENO_IN", "-j", "TCPINC_NO_SUCH_CHAIN"]
        with monkeypatch.context() as patch:
            patch.setattr(rules, "install_commands", lambda s: [*install_commands(s), bad])
            with pytest.raises(CommandError, match="iptables-restore"):
                install_rules(net, NODE, spec)
        failed = saved(net)
        # A chain of ours already there (a killed run's) fails the install, and goes with it.
        net.run(NODE, [*rules.IPTABLES, "-N", "TCPINC_ENO_OUT"])
        with pytest.raises(CommandError, match="iptables-restore"):
            install_rules(net, NODE, spec)
        leftover = saved(net)
        install_rules(net, NODE, spec)  # and the next install succeeds
        installed = saved(net)
        remove_rules(net, NODE)
        after = saved(net)
    assert half_removed == failed == leftover == after == before
    assert len(installed) == len(before) + 4 + 14


def test_a_server_listens_only_once_its_hosts_hook_is_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hook that comes up after the server's listen() would leave that server without ENO
    for its whole run (opportunistic: plain TCP, ``hook_unavailable``); a CI run under load
    met it. The workload releases the server once the hooks are ready (testbed/workload.py,
    --wait-go): a hook slowed by a second still sees every connection negotiate."""
    from testbed.workload import Workload, run_workload

    plain_argv = rules.hook_argv

    def slow_argv(*args: object, **kwargs: object) -> list[str]:
        return ["sh", "-c", 'sleep 1; exec "$@"', "sh", *plain_argv(*args, **kwargs)]

    monkeypatch.setattr(rules, "hook_argv", slow_argv)
    with Network(topologies.create("direct")) as net:
        records = run_workload(net, Workload(proto="tcpcrypt", policy="opportunistic",
                                             connections=2, eno_datapath="nfqueue"))
    for r in records:
        assert (r["outcome"], r["peer_outcome"], r["peer_fallback_reason"]) == (
            "encrypted", "encrypted", None), r
