"""The order rules of testbed/eno/marks.py: the exact iptables argv."""

from __future__ import annotations

from testbed.eno import marks
from testbed.eno.marks import RELEASED


def test_released_mark_and_verdict():
    assert RELEASED == 0x01000000
    assert marks.verdict_mark(0x5) == 0x5 | RELEASED
    assert marks.verdict_mark(RELEASED) == RELEASED


def test_hold_chain_queues_and_release_chain_clears_the_mark():
    queue = ["-j", "NFQUEUE", "--queue-num", "3", "--queue-bypass"]
    assert marks.hold_rules(queue) == [queue]
    assert marks.release_rules() == [["-j", "MARK", "--set-xmark", "0x0/0x1000000"]]
    assert marks.release_rule() == ["-m", "mark", "--mark", "0x1000000/0x1000000",
                                    "-g", "TCPINC_ENO_RELEASE"]


def test_every_segment_of_the_order_window_is_queued():
    # No condition on the conntrack mark: nothing is counted, so there is no update to lose.
    assert marks.window_rule(32, 16384) == [
        "-p", "tcp", "-m", "connbytes", "--connbytes", "0:32", "--connbytes-dir", "both",
        "--connbytes-mode", "packets", "-m", "connbytes", "--connbytes", "0:16384",
        "--connbytes-dir", "both", "--connbytes-mode", "bytes", "-j", "TCPINC_ENO_HOLD"]
    rule = marks.window_rule(9, 100)
    assert "connmark" not in rule and rule[5] == "0:9" and rule[13] == "0:100"
