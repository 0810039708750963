"""Client-side store of TLS 1.3 tickets (PSK resumption, beyond use-tls-00).

use-tls-00 forbids session resumption; this cache is how a run opts in. A ticket is taken out
when a connection offers it and never put back: RFC 8446 §C.4 says clients SHOULD NOT reuse a
ticket (it would link the connections), and servers that enforce single use for 0-RTT
(RFC 8446 §8.1) would reject it anyway. Every NewSessionTicket the connection receives
(RFC 8446 §4.6.1) replaces the one it used.
"""

from __future__ import annotations

from collections import deque

from OpenSSL import SSL


class TlsSessionCache:
    """Tickets per peer key (a string the caller chooses, e.g. "10.0.0.2:443")."""

    def __init__(self, max_per_peer: int = 4) -> None:
        if max_per_peer < 1:
            raise ValueError("max_per_peer must be at least 1")
        self._max_per_peer = max_per_peer
        self._tickets: dict[str, deque[SSL.Session]] = {}

    def put(self, peer: str, session: SSL.Session) -> None:
        """Store a ticket; the oldest goes once a peer has ``max_per_peer``."""
        queue = self._tickets.setdefault(peer, deque(maxlen=self._max_per_peer))
        queue.append(session)

    def take(self, peer: str) -> SSL.Session | None:
        """Remove and return the newest ticket for ``peer`` (None if there is none)."""
        queue = self._tickets.get(peer)
        if not queue:
            return None
        return queue.pop()

    def count(self, peer: str) -> int:
        return len(self._tickets.get(peer, ()))

    def clear(self) -> None:
        self._tickets.clear()

    def __len__(self) -> int:
        return sum(len(q) for q in self._tickets.values())
