"""The ENO hook's rules as one iptables-restore script per install and per removal
(testbed/eno/rules.py; tests/emulation/test_eno_rules_ns.py applies them in a host)."""

from __future__ import annotations

import pytest

from testbed.eno.rules import HookSpec, install_commands, remove_commands, restore_script

IPT = ["iptables", "-w", "-t", "mangle"]


def test_the_install_script_holds_every_install_command_in_order():
    spec = HookSpec(queue=3, exclude_ports=(5001, 5002))
    cmds = install_commands(spec)
    script = restore_script(cmds)
    lines = script.split("\n")
    assert lines[0] == "*mangle"
    assert lines[-2:] == ["COMMIT", ""]
    assert lines[1:-2] == [" ".join(cmd[len(IPT):]) for cmd in cmds]
    assert len(lines[1:-2]) == 2 + 2 + 2 * (1 + 5 + 1)
    assert lines[1] == "-N TCPINC_ENO_HOLD"
    assert lines[2] == "-A TCPINC_ENO_HOLD -j NFQUEUE --queue-num 3 --queue-bypass"
    assert lines[3] == "-N TCPINC_ENO_RELEASE"
    assert "-A OUTPUT -p tcp -m multiport ! --ports 5001,5002 -j TCPINC_ENO_OUT" in lines
    assert lines[-3] == "-A PREROUTING -p tcp -m multiport ! --ports 5001,5002 -j TCPINC_ENO_IN"


def test_the_removal_script_deletes_the_jumps_then_flushes_then_deletes_the_chains():
    table = ("-P OUTPUT ACCEPT\n-N TCPINC_ENO_HOLD\n-N TCPINC_ENO_IN\n"
             "-A OUTPUT -p udp -j ACCEPT\n"
             "-A PREROUTING -p tcp -m multiport ! --ports 5001 -j TCPINC_ENO_IN\n")
    # One listing of the table serves as every built-in chain's and as the chain list.
    cmds = remove_commands({"OUTPUT": table, "PREROUTING": table, "chains": table})
    assert restore_script(cmds) == (
        "*mangle\n"
        "-D PREROUTING -p tcp -m multiport ! --ports 5001 -j TCPINC_ENO_IN\n"
        "-F TCPINC_ENO_IN\n-F TCPINC_ENO_HOLD\n-X TCPINC_ENO_IN\n-X TCPINC_ENO_HOLD\n"
        "COMMIT\n")


@pytest.mark.parametrize("words", [["-A", "X", "--comment", "two words"], ["-A", "X", ""],
                                   ["-A", "X", '"q"'], ["-A", "X", "#"], ["-A", "X\tY"]])
def test_words_iptables_restore_would_misread_are_refused(words):
    with pytest.raises(ValueError, match="split or misread"):
        restore_script([[*IPT, *words]])


@pytest.mark.parametrize("cmd", [["iptables", "-w", "-t", "nat", "-N", "X"],
                                 ["iptables", "-t", "mangle", "-N", "X"], ["ip6tables", "-N", "X"]])
def test_commands_for_another_table_or_tool_are_refused(cmd):
    with pytest.raises(ValueError, match="not an iptables command on the mangle table"):
        restore_script([cmd])
