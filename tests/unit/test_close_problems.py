"""How a connection's close is read from a capture (tests/helpers.py, ``close_problems``).

tests/data/close_late_reset.pcap is the client capture of a CI run of
tests/emulation/test_close_and_order.py (arm tls-0rtt-syn, NFQUEUE ENO hook, 10 ms RTT): on
the second connection the client's ACK of the server's FIN was held on its way to the
server's TCP (the hook queues every segment of so short a connection) past the server's
tail-loss probe timer; the server repeated its FIN, the held ACK then closed its socket, and
the client's ACK of the repeat drew a reset from the closed port.
"""

from __future__ import annotations

from pathlib import Path

from testbed.net.flows import Connection, connections
from testbed.net.pcap import Segment, read_segments
from tests.helpers import close_problems

PCAP = Path(__file__).parent.parent / "data" / "close_late_reset.pcap"
FIRST, SECOND = 56259, 48161  # the two connections' client ports


def by_port(segments: list[Segment]) -> dict[int, Connection]:
    return {c.key.client_port: c for c in connections(segments).values()}


def fin_end(segments: list[Segment], port: int) -> int:
    """The sequence number just past the server's FIN on the connection from ``port``."""
    fin = next(s for s in segments if s.sport == 5000 and s.dport == port and s.is_fin)
    return (fin.seq + fin.payload_len + 1) % 2**32


def test_a_reset_after_the_close_completed_is_listed_apart() -> None:
    conns = by_port(read_segments(PCAP))
    assert close_problems(conns[FIRST]) == ([], [])
    # The client's FIN (segment 7) acknowledged (10), the server's FIN (10) acknowledged
    # (11), the server's FIN repeated (12), the client's ACK of the repeat (13), the reset.
    second = conns[SECOND]
    assert [cs.segment.is_rst for cs in second.segments].index(True) == 14
    assert close_problems(second) == ([], ["RST s2c at segment 14"])


def test_a_reset_before_the_fin_is_acknowledged_is_a_problem() -> None:
    segments = read_segments(PCAP)
    end = fin_end(segments, SECOND)
    # Without the client's ACKs of the server's FIN, the same reset ends an open close.
    cut = [s for s in segments if not (s.sport == SECOND and not s.is_fin and s.ack == end)]
    assert len(segments) - len(cut) == 2
    assert close_problems(by_port(cut)[SECOND]) == (["RST s2c at segment 12"], [])


def test_a_missing_fin_is_a_problem() -> None:
    segments = read_segments(PCAP)
    cut = [s for s in segments if not (s.sport == 5000 and s.dport == FIRST and s.is_fin)]
    assert close_problems(by_port(cut)[FIRST]) == (["no FIN s2c"], [])
