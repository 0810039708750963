"""Segment order through the ENO hook's queue: a per-connection count of held segments.

The hook's rules (rules.py) queue a connection's SYNs and its first packets per direction
(connbytes windows). Alone, those windows let the first segment past a window go straight
on while an earlier segment of the same connection is still held in the queue: it overtakes
it, and the peer answers with a duplicate ACK and a SACK block (RFC 5681 §2, RFC 2018 §3).
The queue itself is one FIFO, and the hook gives verdicts in arrival order, so the fix is to
queue the later segment too. For that, each connection counts the segments it has in the
queue, in bits of its conntrack mark (``PENDING``):

* ``HOLD_CHAIN`` is where every queueing rule jumps: it adds one to the count, then queues.
* the hook gives every verdict as NF_REPEAT with the packet mark bit ``RELEASED`` set (hook.py):
  the segment goes through the same netfilter hook once more, where the entry chain's first
  rule sends it to ``RELEASE_CHAIN``, which takes one off the count, clears the packet-mark
  bits and returns to the built-in chain (the rest of the table sees the segment as it would
  have without the queue).
* a segment of a connection whose count is not zero is queued whatever the windows say
  (``pending_rule``), so it leaves behind the held ones; up to a packet limit per
  connection, so a bulk transfer cannot be drawn into the queue for good.

The count is a binary counter of ``COUNT_BITS`` bits; iptables has no arithmetic, so adding
one is one rule per bit position: "the lowest clear bit is bit i" sets bit i and clears the
bits below it (taking one off is the mirror image). Rules see the mark as earlier rules left
it, and a changed count can match a later rule (0 -> 1 matches "bit 1 is the lowest clear
bit"), so every rule also requires and sets the conntrack mark bit ``STEPPED``, and the
chain's next rule clears it: one change per traversal. A count at its maximum is not
raised: the segment is still queued (in order), marked ``UNCOUNTED``, and its release takes
nothing off.

The match and the change are two steps, not one atomic operation: two segments of one
connection judged at the same instant on two CPUs can lose an update. A lost raise can let
a later segment past a held one (the reordering this prevents, now rarer by far); a lost
release leaves the count above zero (see below).

A segment lost inside the queue (the hook killed while holding it) leaves the count above
zero for good: every later segment of that connection is then queued, in order, and the
connection is slower but correct; with no hook bound, ``--queue-bypass`` passes them.

Everything here is a pure builder of iptables arguments (tests/unit/test_eno_marks.py
checks the exact argv); rules.py installs them.
"""

from __future__ import annotations

from dataclasses import dataclass

COUNT_BITS = 8
COUNT_SHIFT = 8
PENDING = ((1 << COUNT_BITS) - 1) << COUNT_SHIFT  # conntrack mark bits: segments held
STEPPED = 1 << (COUNT_SHIFT + COUNT_BITS)  # conntrack mark bit: count changed (one traversal)
RELEASED = 0x01000000  # packet mark: the hook's verdict (NF_REPEAT) on a held segment
UNCOUNTED = 0x02000000  # packet mark: held while the count was at its maximum
HOLD_CHAIN = "TCPINC_ENO_HOLD"
RELEASE_CHAIN = "TCPINC_ENO_RELEASE"


@dataclass(frozen=True)
class Step:
    """One count change: connections whose ``PENDING`` bits equal ``match`` (under ``mask``)
    get them set to ``value`` (under the same mask)."""

    match: int
    value: int
    mask: int


def _bits(low: int) -> int:
    """The mask of count bits 0..low, shifted into place."""
    return ((1 << (low + 1)) - 1) << COUNT_SHIFT


def increments() -> list[Step]:
    """Add one: the lowest clear bit is ``i`` -> set it, clear the bits below (and set
    ``STEPPED``, which no step matches)."""
    return [Step(((1 << i) - 1) << COUNT_SHIFT, (1 << i) << COUNT_SHIFT | STEPPED,
                 _bits(i) | STEPPED) for i in range(COUNT_BITS)]


def decrements() -> list[Step]:
    """Take one off: the lowest set bit is ``i`` -> clear it, set the bits below."""
    return [Step((1 << i) << COUNT_SHIFT, ((1 << i) - 1) << COUNT_SHIFT | STEPPED,
                 _bits(i) | STEPPED) for i in range(COUNT_BITS)]


def apply(steps: list[Step], mark: int) -> int:
    """What the rules ``steps`` and the ``STEPPED``-clearing rule after them do to a
    conntrack mark, rule by rule as the kernel runs them; the model the unit tests check."""
    for step in steps:
        if mark & step.mask == step.match:
            mark = (mark & ~step.mask) ^ step.value
    return mark & ~STEPPED


def count(mark: int) -> int:
    return (mark & PENDING) >> COUNT_SHIFT


def _connmark(match: int, mask: int) -> list[str]:
    return ["-m", "connmark", "--mark", f"{match:#x}/{mask:#x}"]


def _set_connmark(step: Step) -> list[str]:
    return ["-j", "CONNMARK", "--set-xmark", f"{step.value:#x}/{step.mask:#x}"]


def hold_rules(queue_target: list[str]) -> list[list[str]]:
    """``HOLD_CHAIN``: count the segment (or mark it uncounted at the maximum), clear
    ``STEPPED``, then queue it with ``queue_target`` (the NFQUEUE target's words)."""
    rules = [[*_connmark(PENDING, PENDING), "-j", "MARK", "--or-mark", f"{UNCOUNTED:#x}"]]
    rules += [[*_connmark(s.match, s.mask), *_set_connmark(s)] for s in increments()]
    return [*rules, _unstep(), queue_target]


def _unstep() -> list[str]:
    return ["-j", "CONNMARK", "--set-xmark", f"0x0/{STEPPED:#x}"]


def release_rules() -> list[list[str]]:
    """``RELEASE_CHAIN``: a counted segment's verdict takes one off the count; then
    ``STEPPED`` and the packet-mark bits are cleared and the chain returns to the built-in
    chain."""
    counted = ["-m", "mark", "--mark", f"{RELEASED:#x}/{RELEASED | UNCOUNTED:#x}"]
    rules = [[*counted, *_connmark(s.match, s.mask), *_set_connmark(s)] for s in decrements()]
    return [*rules, _unstep(), ["-j", "MARK", "--set-xmark", f"0x0/{RELEASED | UNCOUNTED:#x}"]]


def release_rule() -> list[str]:
    """First rule of each entry chain: a segment coming back from the hook goes (goto) to
    ``RELEASE_CHAIN``, which returns to the built-in chain, not here."""
    return ["-m", "mark", "--mark", f"{RELEASED:#x}/{RELEASED:#x}", "-g", RELEASE_CHAIN]


def pending_rule(limit: int) -> list[str]:
    """Queue a segment of a connection that has segments held, whatever the windows say,
    among the connection's first ``limit`` packets (both directions): a bound on what can
    reach userspace when segments arrive faster than the hook serves them, far beyond any
    handshake."""
    return ["-p", "tcp", "-m", "connbytes", "--connbytes", f"0:{limit}", "--connbytes-dir",
            "both", "--connbytes-mode", "packets", "-m", "connmark", "!", "--mark",
            f"0x0/{PENDING:#x}", "-j", HOLD_CHAIN]


def verdict_mark(mark: int) -> int:
    """The packet mark the hook gives with its NF_REPEAT verdict."""
    return mark | RELEASED
