"""Two TEP cores joined in memory, for tests and the benchmark (h11's ConnectionPair idea).

The link can split every transfer into small pieces (TCP may deliver any segmentation) and
can rewrite bytes in flight (a path that tampers). It never reorders or drops: TCP below a TEP
does neither.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from testbed.teps.base import Role, TepContext, TepCore, TepEvent
from testbed.teps.tls.core import TlsCore

# An ENO transcript as RFC 8547 §4.8 builds it: A's SYN option then B's, kind (69) and length
# included; each offers TEP 0x30. Opaque to the TEP, so any bytes would do.
EXAMPLE_TRANSCRIPT = bytes([69, 3, 0x30, 69, 3, 0x30])

# (direction "a->b" or "b->a", bytes) -> bytes actually delivered
Tamper = Callable[[str, bytes], bytes]


@dataclass
class MemoryLink:
    a: TepCore  # ENO role A (TLS client)
    b: TepCore  # ENO role B (TLS server)
    split: int | None = None  # deliver in pieces of at most this many bytes
    tamper: Tamper | None = None
    a_events: list[TepEvent] = field(default_factory=list)
    b_events: list[TepEvent] = field(default_factory=list)
    wire: list[tuple[str, bytes]] = field(default_factory=list)  # what each side wrote

    def start(self, now: float = 0.0) -> None:
        self.a_events.extend(self.a.start(now))
        self.b_events.extend(self.b.start(now))

    def step(self, now: float = 0.0) -> bool:
        """Move what each side has to send once; True if anything moved."""
        moved = self._carry(self.a, self.b, "a->b", self.b_events, now)
        return self._carry(self.b, self.a, "b->a", self.a_events, now) or moved

    def pump(self, now: float = 0.0, max_rounds: int = 50) -> None:
        """Step until both sides are quiet."""
        for _ in range(max_rounds):
            if not self.step(now):
                return
        raise RuntimeError(f"link still busy after {max_rounds} rounds")

    def _carry(
        self, src: TepCore, dst: TepCore, direction: str, sink: list[TepEvent], now: float
    ) -> bool:
        data = src.data_to_send()
        if not data:
            return False
        self.wire.append((direction, data))
        if self.tamper is not None:
            data = self.tamper(direction, data)
        size = self.split or len(data)
        for offset in range(0, len(data), size):
            sink.extend(dst.receive_data(data[offset : offset + size], now))
        return True

    def handshake(self, now: float = 0.0) -> None:
        """start() both ends and pump until the link is quiet."""
        self.start(now)
        self.pump(now)


def tls_pair(
    *,
    client: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
    transcript: bytes = EXAMPLE_TRANSCRIPT,
    server_transcript: bytes | None = None,
    split: int | None = None,
    tamper: Tamper | None = None,
) -> tuple[MemoryLink, TlsCore, TlsCore]:
    """A TLS client (role A) and server (role B) on a fresh link; nothing started yet."""
    a = TlsCore(TepContext(role=Role.A, transcript=transcript, options=dict(client or {})))
    b_transcript = transcript if server_transcript is None else server_transcript
    b = TlsCore(TepContext(role=Role.B, transcript=b_transcript, options=dict(server or {})))
    return MemoryLink(a, b, split=split, tamper=tamper), a, b
