"""Segment order through the ENO hook's queue, and the packet mark of a released segment.

The hook's rules (rules.py) queue a connection's SYNs and its first packets per direction
(connbytes windows), which is where ENO is written and read. Alone, those windows let the
first segment past a window go straight on while an earlier segment of the same connection is
still held in the queue: it overtakes it, and the peer answers with a duplicate ACK and a
SACK block (RFC 5681 §2, RFC 2018 §3). The queue is one FIFO and the hook gives verdicts in
arrival order, so a segment that goes through the queue too cannot overtake; the rule is
that every segment among a connection's first ``order_window`` packets and ``order_bytes``
bytes (both directions, conntrack's counters, which include the segment) is queued
(``window_rule``). Past that point none is, and the handshake is long over. The byte bound
keeps bulk data out of userspace: conntrack counts a GSO super-packet as one packet, and the
queue hands it to the hook as the segments it stands for (up to 64 KiB each).

An earlier form queued a segment outside the windows only while its connection had segments
held: a count in the conntrack mark, raised by the queueing rules and lowered by each
verdict. Raising and lowering are each a read-modify-write of the mark (iptables has no
atomic add), and the two meet exactly when it matters: the application's reply is written
(a raise, on its CPU) while the hook releases the segment that carried the peer's request
(a lower, in the hook's verdict on the other CPU). Measured with tls-0rtt on the 2-vCPU
machine, 2,000 connections at 2 ms RTT and 8 at once on the nfqueue datapath, the two rule
sets interleaved in one run: 30 connections with a reordered segment under the count, 0 with
every segment of the window queued (14 and 0 in a second run). The price is a queue round
through the hook for the window's segments the count let through: +0.14 ms (tls-0rtt),
+0.22 ms (tcpcrypt) and +0.32 ms (tls) median TTFB at 10 ms RTT, one connection at a time,
300 each, same run.

* ``HOLD_CHAIN`` is where every queueing rule jumps: it queues with ``--queue-bypass``.
* the hook gives every verdict as NF_REPEAT with the packet mark bit ``RELEASED`` set (hook.py):
  the segment goes through the same netfilter hook once more, where the entry chain's first
  rule sends it to ``RELEASE_CHAIN``, which clears the bit and returns to the built-in chain
  (the rest of the table sees the segment as it would have without the queue).

Everything here is a pure builder of iptables arguments (tests/unit/test_eno_marks.py
checks the exact argv); rules.py installs them.
"""

from __future__ import annotations

RELEASED = 0x01000000  # packet mark: the hook's verdict (NF_REPEAT) on a held segment
HOLD_CHAIN = "TCPINC_ENO_HOLD"
RELEASE_CHAIN = "TCPINC_ENO_RELEASE"


def hold_rules(queue_target: list[str]) -> list[list[str]]:
    """``HOLD_CHAIN``: queue the segment with ``queue_target`` (the NFQUEUE target's words)."""
    return [queue_target]


def release_rules() -> list[list[str]]:
    """``RELEASE_CHAIN``: clear ``RELEASED``; the chain then returns to the built-in chain."""
    return [["-j", "MARK", "--set-xmark", f"0x0/{RELEASED:#x}"]]


def release_rule() -> list[str]:
    """First rule of each entry chain: a segment coming back from the hook goes (goto) to
    ``RELEASE_CHAIN``, which returns to the built-in chain, not here."""
    return ["-m", "mark", "--mark", f"{RELEASED:#x}/{RELEASED:#x}", "-g", RELEASE_CHAIN]


def window_rule(limit: int, byte_limit: int) -> list[str]:
    """Queue every segment while the connection has carried at most ``limit`` packets and
    ``byte_limit`` bytes (both directions), whatever the per-direction windows say: none can
    then overtake a held one."""
    return ["-p", "tcp", "-m", "connbytes", "--connbytes", f"0:{limit}", "--connbytes-dir",
            "both", "--connbytes-mode", "packets", "-m", "connbytes", "--connbytes",
            f"0:{byte_limit}", "--connbytes-dir", "both", "--connbytes-mode", "bytes",
            "-j", HOLD_CHAIN]


def verdict_mark(mark: int) -> int:
    """The packet mark the hook gives with its NF_REPEAT verdict."""
    return mark | RELEASED
