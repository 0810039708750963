"""Inspecting boxes on one port: dpi-443 and tls12-strict (packet models).

Both follow a connection's byte streams in sequence order (``StreamCursor``) and, when
they decide a flow must die, do what on-path resetters do (the Great Firewall's forged
RST+ACK, docs/middlebox-evidence.md §2): drop the offending packet, forge a RST+ACK to each end
with the sequence number that end expects, and drop everything the flow sends after.

The RST to the receiver of the dropped packet carries that packet's own sequence number
(what the receiver expects next, since the packet never arrives). The RST to its sender
carries the highest sequence number the box forwarded in the other direction, or the
packet's acknowledgment number if that is later: RFC 5961 section 3.2 makes a stack
answer an inexact RST with a challenge ACK instead of resetting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from middleboxes import packet as p
from middleboxes.pktmodel import (
    ACCEPT,
    DROP,
    Decision,
    FlowTable,
    PacketModel,
    StreamCursor,
    packet_model,
)
from middleboxes.tlsparse import Tls12Follower, TlsParseError, looks_like_client_hello


@dataclass
class _Inspected:
    cursors: dict[bool, StreamCursor] = field(
        default_factory=lambda: {True: StreamCursor(), False: StreamCursor()})
    forwarded_end: dict[bool, int | None] = field(
        default_factory=lambda: {True: None, False: None})
    first_bytes: bytearray = field(default_factory=bytearray)
    follower: Tls12Follower = field(default_factory=Tls12Follower)
    done: bool = False  # decided to let the flow be: stop inspecting
    killed: str | None = None


class InspectingBox(PacketModel):
    """Shared flow following and killing; subclasses implement ``inspect``."""

    defaults: ClassVar[dict[str, Any]] = {"port": 443}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.port = int(self.params["port"])
        self.flows: FlowTable[_Inspected] = FlowTable()
        self.kill_reasons: list[str] = []

    def inspect(self, flow: _Inspected, from_client: bool, data: bytes) -> str | None:
        """New in-order bytes of one direction; return a reason to kill, or None."""
        raise NotImplementedError

    def handle(self, data: bytes, now: float) -> Decision:
        pkt = p.parse(data)
        if pkt is None or self.port not in (pkt.sport, pkt.dport):
            return ACCEPT
        from_client = pkt.dport == self.port
        if pkt.has(p.SYN) and not pkt.has(p.ACK):
            flow = self.flows.put(pkt, _Inspected())
        else:
            flow = self.flows.get_or_create(pkt, _Inspected)
        if flow.killed is not None:
            return DROP
        if not flow.done:
            cursor = flow.cursors[from_client]
            if pkt.has(p.SYN):
                cursor.syn(pkt.seq)
            start = p.seq_add(pkt.seq, int(pkt.has(p.SYN)))
            reason = self.inspect(flow, from_client, cursor.feed(start, pkt.payload))
            if reason is not None:
                return self._kill(flow, pkt, from_client, reason)
        end = p.seq_add(pkt.seq, pkt.seg_len)
        last = flow.forwarded_end[from_client]
        if last is None or p.seq_after(end, last):
            flow.forwarded_end[from_client] = end
        return ACCEPT

    def _kill(self, flow: _Inspected, pkt: p.TcpPacket, from_client: bool,
              reason: str) -> Decision:
        flow.killed = reason
        self.kill_reasons.append(reason)
        self.counters.reset += 1
        other_end = flow.forwarded_end[not from_client]
        to_sender_seq = pkt.ack
        if other_end is not None and (not pkt.has(p.ACK) or p.seq_after(other_end, pkt.ack)):
            to_sender_seq = other_end
        to_receiver = p.forward_reset(pkt, pkt.seq, pkt.ack)
        # The receiver never got the dropped bytes: the sender is acknowledged up to them
        # (past its SYN if the dropped packet was a SYN carrying data, RFC 9293 3.10.7.3).
        to_sender = p.reverse_reset(pkt, to_sender_seq,
                                    p.seq_add(pkt.seq, int(pkt.has(p.SYN))))
        return Decision(accept=False, inject=(to_receiver, to_sender))


@packet_model
class Dpi443(InspectingBox):
    """Reset flows to ``port`` whose first client bytes are not a TLS ClientHello record."""

    name = "dpi-443"

    def inspect(self, flow: _Inspected, from_client: bool, data: bytes) -> str | None:
        if not from_client or not data:
            return None
        flow.first_bytes += data[:6 - len(flow.first_bytes)]
        if len(flow.first_bytes) < 6:
            return None
        flow.done = True
        if looks_like_client_hello(bytes(flow.first_bytes)):
            return None
        return f"first client bytes {bytes(flow.first_bytes).hex()} are not a ClientHello"


@packet_model
class Tls12Strict(InspectingBox):
    """Kill flows to ``port`` whose handshake a TLS 1.2-only parser cannot follow."""

    name = "tls12-strict"

    def inspect(self, flow: _Inspected, from_client: bool, data: bytes) -> str | None:
        if not data:
            return None
        try:
            flow.follower.feed(from_client, data)
        except TlsParseError as err:
            return str(err)
        flow.done = flow.follower.opaque
        return None
