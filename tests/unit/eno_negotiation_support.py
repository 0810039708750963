"""Two ENO endpoints in memory over a fake path, as the negotiation tests drive them
(test_eno_negotiation.py, test_eno_negotiation_edges.py).

Every segment is built the way the NFQUEUE hook will build it: a kernel-like options
block, plus the ENO option the negotiator returned (``append_eno``), through a
"middlebox" function, into the other end's ``receive_*``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from testbed.eno.config import EnoConfig
from testbed.eno.events import Aborted, EnoEvent, Fallback, FallbackReason, Negotiated
from testbed.eno.negotiation import EnoNegotiator, Outgoing
from testbed.eno.tcp_options import append_eno, find_eno

LINUX_SYN = bytes.fromhex("020405b4" "0402" "080a0000000100000000" "01" "030307")  # 20 bytes
LINUX_ACK = bytes.fromhex("0101" "080a0000000200000001")  # 12 bytes
X, Y, Z = 0x21, 0x22, 0x23

Box = Callable[[str, bytes], bytes]  # (segment name, options block) -> options block


def passthrough(name: str, options: bytes) -> bytes:
    return options


def wire(base: bytes, eno: bytes | None) -> bytes:
    return append_eno(base, eno) if eno is not None else base


def eno_of(segment_options: bytes) -> bytes:
    """The one ENO option of a segment, kind and length included."""
    (eno,) = find_eno(segment_options)
    return eno.encode()


@dataclass
class End:
    """One endpoint plus every event it reported."""

    neg: EnoNegotiator
    events: list[EnoEvent] = field(default_factory=list)

    def collect(self, events: list[EnoEvent]) -> None:
        self.events += events

    def sent(self, out: Outgoing) -> bytes | None:
        """The option an outgoing segment carries; its events join the others."""
        self.events += out.events
        return out.option

    def drain(self) -> None:
        self.events += self.neg.pop_events()

    @property
    def outcomes(self) -> list[EnoEvent]:
        return [e for e in self.events if isinstance(e, Negotiated | Fallback | Aborted)]


def make(config: EnoConfig, active: bool) -> End:
    return End(EnoNegotiator(config, active=active))


def three_way(
    a: End, b: End, box: Box = passthrough, ack_base: bytes = LINUX_ACK, syn_base: bytes = LINUX_SYN
) -> list[bytes]:
    """Active ``a``, passive ``b``: SYN, SYN-ACK, ACK, then B's first data segment."""
    syn = box("syn", wire(syn_base, a.sent(a.neg.send_syn(syn_base))))
    b.collect(b.neg.receive_syn(syn))
    synack = box("synack", wire(syn_base, b.sent(b.neg.send_synack(syn_base))))
    a.collect(a.neg.receive_synack(synack))
    ack = box("ack", wire(ack_base, a.sent(a.neg.send_ack(ack_base))))
    b.collect(b.neg.receive_ack(ack))
    reply = box("data_b", wire(LINUX_ACK, b.sent(b.neg.send_ack(LINUX_ACK))))
    a.collect(a.neg.receive_ack(reply))
    a.drain()
    b.drain()
    return [syn, synack, ack, reply]


def fallback_reason(end: End) -> FallbackReason:
    outcome = end.neg.outcome
    assert isinstance(outcome, Fallback), outcome
    return outcome.reason


def negotiated(end: End) -> Negotiated:
    outcome = end.neg.outcome
    assert isinstance(outcome, Negotiated), outcome
    assert end.outcomes == [outcome]  # reported exactly once
    return outcome
