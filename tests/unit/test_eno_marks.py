"""The held-segment count of testbed/eno/marks.py: the counter the rules stand for, and the
exact iptables argv."""

from __future__ import annotations

from testbed.eno import marks
from testbed.eno.marks import PENDING, RELEASED, STEPPED, UNCOUNTED

MAX = (1 << marks.COUNT_BITS) - 1
OTHER = 0x00400000  # a conntrack mark bit another rule set uses (middleboxes/iptables.py)


def test_the_rules_count_up_to_the_maximum_and_back_one_at_a_time():
    mark = OTHER
    for k in range(MAX):
        mark = marks.apply(marks.increments(), mark)
        assert marks.count(mark) == k + 1
        assert mark & ~PENDING == OTHER  # no other bit moves, STEPPED is cleared
    assert marks.apply(marks.increments(), mark) == mark  # saturated: unchanged
    for k in range(MAX, 0, -1):
        mark = marks.apply(marks.decrements(), mark)
        assert marks.count(mark) == k - 1
        assert mark & ~PENDING == OTHER
    assert marks.apply(marks.decrements(), mark) == OTHER  # zero stays zero


def test_exactly_one_step_changes_a_count_even_though_rules_run_in_order():
    for value in range(MAX + 1):
        mark = value << marks.COUNT_SHIFT
        for steps, limit in ((marks.increments(), MAX), (marks.decrements(), 0)):
            fired = 0
            for step in steps:  # as the kernel runs them: each sees the mark the last left
                if mark & step.mask == step.match:
                    mark = (mark & ~step.mask) ^ step.value
                    fired += 1
            assert fired == (0 if value == limit else 1), (value, fired)
            mark = value << marks.COUNT_SHIFT


def test_bits_do_not_overlap():
    assert PENDING == 0xFF00 and STEPPED == 0x10000
    assert not PENDING & STEPPED and not PENDING & OTHER and not STEPPED & OTHER
    assert RELEASED & UNCOUNTED == 0
    assert marks.verdict_mark(0x5) == 0x5 | RELEASED


def test_hold_chain_argv():
    queue = ["-j", "NFQUEUE", "--queue-num", "3", "--queue-bypass"]
    rules = marks.hold_rules(queue)
    assert rules[0] == ["-m", "connmark", "--mark", "0xff00/0xff00", "-j", "MARK", "--or-mark",
                        "0x2000000"]
    assert rules[1] == ["-m", "connmark", "--mark", "0x0/0x10100", "-j", "CONNMARK",
                        "--set-xmark", "0x10100/0x10100"]
    assert rules[2] == ["-m", "connmark", "--mark", "0x100/0x10300", "-j", "CONNMARK",
                        "--set-xmark", "0x10200/0x10300"]
    assert rules[8] == ["-m", "connmark", "--mark", "0x7f00/0x1ff00", "-j", "CONNMARK",
                        "--set-xmark", "0x18000/0x1ff00"]
    assert rules[9] == ["-j", "CONNMARK", "--set-xmark", "0x0/0x10000"]
    assert rules[10] == queue and len(rules) == 11


def test_release_chain_argv():
    rules = marks.release_rules()
    counted = ["-m", "mark", "--mark", "0x1000000/0x3000000"]
    assert rules[0] == [*counted, "-m", "connmark", "--mark", "0x100/0x10100", "-j", "CONNMARK",
                        "--set-xmark", "0x10000/0x10100"]
    assert rules[1] == [*counted, "-m", "connmark", "--mark", "0x200/0x10300", "-j", "CONNMARK",
                        "--set-xmark", "0x10100/0x10300"]
    assert rules[7] == [*counted, "-m", "connmark", "--mark", "0x8000/0x1ff00", "-j", "CONNMARK",
                        "--set-xmark", "0x17f00/0x1ff00"]
    assert rules[8] == ["-j", "CONNMARK", "--set-xmark", "0x0/0x10000"]
    assert rules[9] == ["-j", "MARK", "--set-xmark", "0x0/0x3000000"]
    assert len(rules) == 10
    assert marks.release_rule() == ["-m", "mark", "--mark", "0x1000000/0x1000000",
                                    "-g", "TCPINC_ENO_RELEASE"]
    assert marks.pending_rule(32) == ["-p", "tcp", "-m", "connbytes", "--connbytes", "0:32",
                                      "--connbytes-dir", "both", "--connbytes-mode", "packets",
                                      "-m", "connmark", "!", "--mark", "0x0/0xff00", "-j",
                                      "TCPINC_ENO_HOLD"]


def test_each_step_argv_is_the_step():
    for step, rule in zip(marks.increments(), marks.hold_rules([])[1:9], strict=True):
        assert rule == ["-m", "connmark", "--mark", f"{step.match:#x}/{step.mask:#x}", "-j",
                        "CONNMARK", "--set-xmark", f"{step.value:#x}/{step.mask:#x}"]
    for step, rule in zip(marks.decrements(), marks.release_rules()[:8], strict=True):
        assert rule[4:] == ["-m", "connmark", "--mark", f"{step.match:#x}/{step.mask:#x}", "-j",
                            "CONNMARK", "--set-xmark", f"{step.value:#x}/{step.mask:#x}"]
