"""Boxes that act on data carried by SYN segments (packet models).

RFC 8547 §4.7 lets a TEP define data on the SYN and SYN-ACK, which is where the
one-round-trip designs put their first handshake message; these models are what such a
first packet can meet on a path:

- ``drop-syn-data``: drops every SYN (SYN-only or SYN-ACK) that carries payload. RFC 7413
  §7.1 cites studies in which 6% of probed paths dropped SYNs with data; TFO clients
  recover by retransmitting the SYN without data after the SYN timeout.
- ``strip-syn-data``: forwards such a SYN with its payload removed (IP length and both
  checksums recomputed), so the receiver acknowledges only the ISN and the sender must
  send the bytes again after the handshake.
- ``replay-syn``: forwards a client's SYN with data and sends an exact copy again,
  ``delay_ms`` later, from the box to the same server: the duplicate of RFC 7413 §6.1
  that arrives after the server has cleared the original connection's state, made
  deliberate. Whatever the server's TCP hands its application from the copy is what an
  anti-replay mechanism above TCP has to refuse.

Segments without the SYN flag pass untouched (the boxes' rules queue only SYNs).
"""

from __future__ import annotations

from typing import Any, ClassVar

from middleboxes import packet as p
from middleboxes.pktmodel import ACCEPT, DROP, Decision, FlowTable, PacketModel, packet_model


def _syn_with_data(data: bytes) -> p.TcpPacket | None:
    pkt = p.parse(data)
    if pkt is None or not pkt.has(p.SYN) or not pkt.payload:
        return None
    return pkt


@packet_model
class DropSynData(PacketModel):
    """Drop SYN and SYN-ACK segments that carry payload; everything else passes."""

    name = "drop-syn-data"
    defaults: ClassVar[dict[str, Any]] = {}

    def handle(self, data: bytes, now: float) -> Decision:
        return DROP if _syn_with_data(data) is not None else ACCEPT


@packet_model
class StripSynData(PacketModel):
    """Forward SYN and SYN-ACK segments without their payload (options kept byte for byte)."""

    name = "strip-syn-data"
    defaults: ClassVar[dict[str, Any]] = {}

    def handle(self, data: bytes, now: float) -> Decision:
        pkt = _syn_with_data(data)
        if pkt is None:
            return ACCEPT
        return Decision(replacement=pkt.with_(payload=b"").to_bytes())


@packet_model
class ReplaySyn(PacketModel):
    """Forward each client SYN with data, then inject an exact copy ``delay_ms`` later.

    A retransmission of a SYN already scheduled (same endpoints, same ISN) is not
    scheduled again, so one connection attempt is replayed ``copies`` times, not once per
    retransmission; a new ISN on the same endpoints is a new attempt. Copies still pending when the
    box stops are discarded: a stopped box replays nothing.
    """

    name = "replay-syn"
    defaults: ClassVar[dict[str, Any]] = {"delay_ms": 2000, "copies": 1}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.delay_s = float(self.params["delay_ms"]) / 1000.0
        self.copies = int(self.params["copies"])
        if self.delay_s < 0 or self.copies < 1:
            raise ValueError("replay-syn needs delay_ms >= 0 and copies >= 1")
        self.pending: list[tuple[float, bytes]] = []
        self._scheduled: FlowTable[int] = FlowTable()  # per flow: the ISN replayed
        self.replayed = 0

    def handle(self, data: bytes, now: float) -> Decision:
        pkt = _syn_with_data(data)
        if pkt is None or pkt.has(p.ACK):
            return ACCEPT
        if self._scheduled.get(pkt) != pkt.seq:
            self._scheduled.put(pkt, pkt.seq)
            for i in range(1, self.copies + 1):
                self.pending.append((now + i * self.delay_s, data))
            self.pending.sort(key=lambda item: item[0])
        return ACCEPT

    def next_deadline(self) -> float | None:
        return self.pending[0][0] if self.pending else None

    def poll(self, now: float) -> list[bytes]:
        due = [raw for when, raw in self.pending if when <= now]
        self.pending = [(when, raw) for when, raw in self.pending if when > now]
        self.replayed += len(due)
        self.counters.injected += len(due)
        return due

    def flush(self) -> list[bytes]:
        self.pending = []
        return []
