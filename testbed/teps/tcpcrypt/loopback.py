"""Two tcpcrypt cores joined in memory, for tests and benchmarks (no sockets, no clock).

``FakeLink`` is one direction of a TCP connection as the cores see it: the byte stream is never
reordered or altered, but it is cut into arbitrary pieces, pieces are glued together, and some
are held back for a while. ``Pair.pump`` moves bytes both ways until nothing moves. The ENO
step that matters to tcpcrypt (which suboption data each SYN carries, RFC 8548 §3.5) is done
by ``connect`` with ``options.local_suboption_data``, as the ENO layer would.
"""

from __future__ import annotations

import hashlib
import random as _random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from testbed.teps.base import Role, TepContext, TepEvent

from .core import TcpcryptCore
from .options import local_suboption_data


class DeterministicRandom:
    """A seeded byte source (SHA-256 in counter mode) standing in for os.urandom in tests."""

    def __init__(self, seed: bytes | str) -> None:
        self._seed = seed.encode() if isinstance(seed, str) else bytes(seed)
        self._counter = 0
        self.calls: list[int] = []

    def __call__(self, n: int) -> bytes:
        self.calls.append(n)
        out = b""
        while len(out) < n:
            block = self._seed + self._counter.to_bytes(8, "big")
            out += hashlib.sha256(block).digest()
            self._counter += 1
        return out[:n]


class ScriptedRandom:
    """Returns the given byte strings in order, checking each requested length."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = list(chunks)

    def __call__(self, n: int) -> bytes:
        if not self._chunks:
            raise AssertionError(f"random({n}) called after the script ran out")
        chunk = self._chunks.pop(0)
        if len(chunk) != n:
            raise AssertionError(f"random({n}) called, script has {len(chunk)} bytes next")
        return chunk

    @property
    def exhausted(self) -> bool:
        return not self._chunks


class FakeLink:
    """One direction of a byte stream that splits, coalesces and delays, in order."""

    def __init__(self, rng: _random.Random, max_piece: int = 9, hold: float = 0.3) -> None:
        self._rng = rng
        self._max_piece = max_piece
        self._hold = hold
        self._queue = bytearray()

    def send(self, data: bytes) -> None:
        self._queue += data

    @property
    def pending(self) -> int:
        return len(self._queue)

    def deliver(self) -> list[bytes]:
        """Some prefix of what is queued, cut into pieces; the rest waits (a delay)."""
        pieces: list[bytes] = []
        while self._queue and self._rng.random() >= self._hold:
            size = self._rng.randint(1, self._max_piece)
            if self._rng.random() < 0.2:
                size = len(self._queue)  # coalesce everything queued
            pieces.append(bytes(self._queue[:size]))
            del self._queue[:size]
        return pieces

    def flush(self) -> list[bytes]:
        out = [bytes(self._queue)] if self._queue else []
        self._queue.clear()
        return out


@dataclass
class Pair:
    """Cores ``a`` (role A) and ``b`` (role B) and the links between them."""

    a: TcpcryptCore
    b: TcpcryptCore
    a_to_b: FakeLink
    b_to_a: FakeLink
    events_a: list[TepEvent] = field(default_factory=list)
    events_b: list[TepEvent] = field(default_factory=list)

    def pump(self, now: float = 0.0, max_rounds: int = 100_000) -> None:
        """Move bytes both ways until both links are empty and neither core has output."""
        for _ in range(max_rounds):
            self.a_to_b.send(self.a.data_to_send())
            self.b_to_a.send(self.b.data_to_send())
            if not self.a_to_b.pending and not self.b_to_a.pending:
                return
            pieces_ab = self.a_to_b.deliver() or self.a_to_b.flush()
            pieces_ba = self.b_to_a.deliver() or self.b_to_a.flush()
            for piece in pieces_ab:
                self.events_b += self.b.receive_data(piece, now)
            for piece in pieces_ba:
                self.events_a += self.a.receive_data(piece, now)
        raise RuntimeError("pump did not settle")

    def start(self, now: float = 0.0) -> None:
        """Start both cores; a resumed session's HandshakeComplete comes from start()."""
        self.events_a += self.a.start(now)
        self.events_b += self.b.start(now)


def connect(
    tep_id: int,
    *,
    transcript: bytes = b"",
    random_a: Callable[[int], bytes] | None = None,
    random_b: Callable[[int], bytes] | None = None,
    options_a: dict[str, Any] | None = None,
    options_b: dict[str, Any] | None = None,
    link_seed: int = 0,
    now: float = 0.0,
    max_piece: int = 9,
) -> Pair:
    """Run the tcpcrypt part of ENO (suboption data, §3.5), make both cores, start them."""
    rand_a = random_a or DeterministicRandom(b"A")
    rand_b = random_b or DeterministicRandom(b"B")
    opts_a = options_a if options_a is not None else {}
    opts_b = options_b if options_b is not None else {}
    syn_data = local_suboption_data(opts_a, tep_id, rand_a, now)
    synack_data = local_suboption_data(opts_b, tep_id, rand_b, now, peer_data=syn_data)
    ctx_a = TepContext(Role.A, transcript, rand_a, now, synack_data, opts_a)
    ctx_b = TepContext(Role.B, transcript, rand_b, now, syn_data, opts_b)
    rng = _random.Random(link_seed)
    pair = Pair(
        TcpcryptCore(ctx_a, tep_id),
        TcpcryptCore(ctx_b, tep_id),
        FakeLink(rng, max_piece),
        FakeLink(rng, max_piece),
    )
    pair.start(now)
    return pair
