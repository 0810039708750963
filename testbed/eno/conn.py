"""One connection end the ENO hook follows, and its control-channel view (control.Result).

Shared by the hook's engine (engine.py) and the bpf datapath's reading of the kernel's record
(testbed/eno/bpf/datapath.py): both describe a connection with a ``Conn`` around the pure
core's ``EnoNegotiator``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from testbed.eno.control import Result
from testbed.eno.events import Aborted, Fallback, Negotiated
from testbed.eno.negotiation import EnoNegotiator

Key = tuple[str, int, str, int]  # local ip, local port, remote ip, remote port


@dataclass
class Conn:
    """One connection end the hook follows."""

    key: Key
    negotiator: EnoNegotiator
    active: bool
    last: float
    syn_seq: int | None = None  # our SYN (or SYN-ACK) sequence number
    syn_len: int = 0  # data bytes in it (for syn_data_acked, §4.7)
    peer_isn: int | None = None
    peer_eno_after_fallback: bool = False
    error: str | None = None
    packets: int = 0
    # §4.7 verdict on the peer's SYN data: "accepted" or "discarded:<reason>" ("" if none)
    syn_data: str = ""



def result_of(conn: Conn) -> Result:
    """The control-channel view of one connection."""
    neg = conn.negotiator
    base = Result(
        local=(conn.key[0], conn.key[1]), remote=(conn.key[2], conn.key[3]),
        active=conn.active, state=neg.state.value, error=conn.error,
        peer_eno_after_fallback=conn.peer_eno_after_fallback, packets=conn.packets,
        syn_data=conn.syn_data,
    )
    outcome = neg.outcome
    if outcome is None and conn.syn_data == "accepted" and neg.pending is not None:
        return _negotiated_view(replace(base, tentative=True), neg.pending, "")
    if isinstance(outcome, Negotiated):
        return _negotiated_view(base, outcome, "negotiated")
    if isinstance(outcome, Fallback):
        return _replace(base, outcome="fallback", reason=outcome.reason.value,
                        detail=outcome.detail)
    if isinstance(outcome, Aborted):
        fallback = outcome.fallback.value if outcome.fallback else None
        return _replace(base, outcome="aborted", reason=outcome.reason.value,
                        fallback=fallback, detail=outcome.detail)
    return base


def _negotiated_view(base: Result, chosen: Negotiated, outcome: str) -> Result:
    """``base`` with what the negotiation decided; ``outcome`` "" for a tentative view."""
    local = chosen.local_suboptions[-1].data if chosen.local_suboptions else None
    return _replace(
        base, outcome=outcome or None, role=chosen.role.value, tep_id=chosen.tep_id,
        tep_byte=chosen.tep_byte, transcript=chosen.transcript.hex(),
        peer_a=chosen.peer_global.a, peer_b=chosen.peer_global.b,
        peer_data=chosen.peer_data.hex(), local_data=(local or b"").hex(),
    )


def _replace(result: Result, **changes: object) -> Result:
    return replace(result, **changes)  # type: ignore[arg-type]
