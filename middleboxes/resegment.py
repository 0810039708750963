"""resegment: split and coalesce data segments in flight, as TSO/LRO and some proxies do.

Theory of operation
-------------------
Each direction of each connection is normalised towards segments of ``split`` payload
bytes:

- a data segment longer than ``split`` is cut into ``split``-byte pieces. Every piece
  carries the original's TCP options byte for byte, as TSO does when it cuts a large
  segment (docs/middlebox-evidence.md §1.1, the MPTCP book crediting Honda et al.); PSH and FIN
  stay on the last piece only, and each piece gets the next IP identification;
- with ``coalesce`` on, a data segment shorter than ``split`` is held for up to
  ``hold_ms`` while later contiguous segments of the same direction are appended to it,
  until ``split`` bytes are reached, the hold time passes, or a segment that cannot be
  merged arrives (non-contiguous, SYN/FIN/RST/URG, or a pure ACK of that direction),
  which releases the held bytes first so order on the wire is kept. The merged segment
  takes its sequence number from the first piece and everything else (ACK, window,
  options such as timestamps) from the newest, as LRO does.

Held and split packets are dropped at the queue and their replacements injected, so the
injected copies always leave before the packet that released them. ``split`` 0 turns
splitting off and coalesces up to the MTU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from middleboxes import packet as p
from middleboxes.pktmodel import ACCEPT, DROP, Decision, PacketModel, packet_model

_UNMERGEABLE = p.SYN | p.FIN | p.RST | p.URG


@dataclass
class _Held:
    pkt: p.TcpPacket
    deadline: float


def split_segment(pkt: p.TcpPacket, size: int) -> list[p.TcpPacket]:
    """Cut ``pkt``'s payload into ``size``-byte pieces with its options copied (TSO)."""
    if size <= 0 or len(pkt.payload) <= size:
        return [pkt]
    pieces = []
    last_flags = pkt.flags
    for index, start in enumerate(range(0, len(pkt.payload), size)):
        chunk = pkt.payload[start:start + size]
        is_last = start + size >= len(pkt.payload)
        flags = last_flags if is_last else pkt.flags & ~(p.PSH | p.FIN)
        piece = pkt.with_(seq=p.seq_add(pkt.seq, start), payload=chunk, flags=flags)
        pieces.append(piece.with_ip_id(pkt.ip_id + index))
    return pieces


def merge_segments(first: p.TcpPacket, later: p.TcpPacket) -> p.TcpPacket:
    """``later`` appended to ``first``: first's seq, later's header and options (LRO)."""
    flags = later.flags | (first.flags & p.PSH)
    return later.with_(seq=first.seq, payload=first.payload + later.payload, flags=flags)


@packet_model
class Resegment(PacketModel):
    name = "resegment"
    defaults = {"split": 300, "coalesce": True, "hold_ms": 2.0, "mtu": 1500}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.split = int(self.params["split"])
        self.coalesce = bool(self.params["coalesce"])
        self.hold = float(self.params["hold_ms"]) / 1000.0
        self.mtu = int(self.params["mtu"])
        if self.split < 0 or self.hold < 0:
            raise ValueError("resegment: split and hold_ms must be >= 0")
        self.held: dict[p.Flow, _Held] = {}

    def _target(self, pkt: p.TcpPacket) -> int:
        """Largest payload a merged segment may carry: ``split``, and always the MTU."""
        room = self.mtu - len(pkt.ip_header) - 20 - len(pkt.options)
        return min(self.split, room) if self.split else room

    def handle(self, data: bytes, now: float) -> Decision:
        pkt = p.parse(data)
        if pkt is None:
            return ACCEPT
        held = self.held.pop(pkt.flow, None)
        before = (held.pkt.to_bytes(),) if held else ()
        if not pkt.payload or pkt.flags & _UNMERGEABLE and not self._splittable(pkt):
            return Decision(inject=before) if before else ACCEPT
        if self.coalesce and held is not None and self._contiguous(held.pkt, pkt):
            merged = merge_segments(held.pkt, pkt)
            if len(merged.payload) <= self._target(merged):
                self.counters.changed += 1
                return self._hold_or_release(merged, held.deadline)
        if self.coalesce and not pkt.flags & _UNMERGEABLE and len(pkt.payload) < self._target(
                pkt):
            self.held[pkt.flow] = _Held(pkt, now + self.hold)
            return Decision(accept=False, inject=before)
        pieces = split_segment(pkt, self.split)
        if len(pieces) == 1:
            return Decision(inject=before) if before else ACCEPT
        self.counters.changed += 1
        return Decision(accept=False, inject=before + tuple(x.to_bytes() for x in pieces))

    @staticmethod
    def _splittable(pkt: p.TcpPacket) -> bool:
        """FIN and PSH may ride on data that is cut (onto the last piece); SYN/RST/URG not."""
        return not pkt.flags & (p.SYN | p.RST | p.URG)

    @staticmethod
    def _contiguous(first: p.TcpPacket, later: p.TcpPacket) -> bool:
        return (not later.flags & _UNMERGEABLE
                and later.seq == p.seq_add(first.seq, len(first.payload)))

    def _hold_or_release(self, merged: p.TcpPacket, deadline: float) -> Decision:
        if len(merged.payload) >= self._target(merged):
            return Decision(accept=False, inject=(merged.to_bytes(),))
        self.held[merged.flow] = _Held(merged, deadline)
        return DROP

    def process(self, data: bytes, now: float) -> Decision:
        """Held segments are delayed, not lost: nothing counts as dropped. ``changed``
        counts segments split into pieces or merged into an earlier one."""
        self.counters.seen += 1
        decision = self.handle(data, now)
        self.counters.injected += len(decision.inject)
        return decision

    def next_deadline(self) -> float | None:
        return min((h.deadline for h in self.held.values()), default=None)

    def poll(self, now: float) -> list[bytes]:
        due = [flow for flow, h in self.held.items() if h.deadline <= now]
        out = [self.held.pop(flow).pkt.to_bytes() for flow in due]
        self.counters.injected += len(out)
        return out

    def flush(self) -> list[bytes]:
        out = [h.pkt.to_bytes() for h in self.held.values()]
        self.held.clear()
        self.counters.injected += len(out)
        return out
