"""Session resumption (RFC 8548 §3.5): cached secrets, identifiers, and the match rule.

Theory of operation
-------------------
After a session on ss[i] (i = 0 for a fresh key exchange) each host may cache ss[i+1] together
with what it needs to use it later: the TEP, the AEAD, and the role it played when ss[0] was
made (that role fixes both which half of resume[i+1] it sends and which of k_ab/k_ba it
encrypts with, forever, §3.3, §3.5). The cache is keyed by peer (for offers, made by the
active opener) and by the identifier half the peer will send (for answers, made by the passive
opener). Taking an entry removes it: a secret is offered or accepted once, whether or not the
resumption then succeeds (§3.5 "lowest i not yet tried", "MUST NOT be used to secure more
than one TCP connection"); the next entry only appears when a session completes.

Suboption data (Figs. 2, 3): ``resume[i]{0..8}`` or ``resume[i]{9..17}`` then a 0..8-byte
nonce; ``sn[i] = nonce_a | nonce_b``, nonce_a being the nonce of the host that was A for ss[0].

The cache is plain memory (§3.5: SHOULD NOT write secrets to non-volatile storage), bounded in
size (oldest entry evicted first) and with entries expiring at a time the caller passes in.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

from .constants import MAX_RESUME_NONCE_LEN, RESUME_HALF_LEN
from .errors import ResumptionError
from .keys import resume_half

logger = logging.getLogger(__name__)

MAX_SUBOPTION_DATA = RESUME_HALF_LEN + MAX_RESUME_NONCE_LEN


@dataclass(frozen=True)
class CachedSession:
    """A cached session secret ss[i] and what is needed to resume from it (§3.5)."""

    peer: Hashable  # whatever names the peer host for the caller (address, host name...)
    tep_id: int  # TEP of the original session; resumption only with the same TEP (§3.5)
    secret: bytes = field(repr=False)  # ss[i]
    index: int  # i
    original_a: bool  # this host played A when ss[0] was made
    aead_id: int  # AEAD of the original session, reused when resuming (see core.py)
    expires: float
    own_half: bytes = field(init=False, repr=False)
    peer_half: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Both halves of resume[i] = CPRF(ss[i], CONST_RESUME, 18), split by original role.
        object.__setattr__(self, "own_half", resume_half(self.secret, self.original_a))
        object.__setattr__(self, "peer_half", resume_half(self.secret, not self.original_a))

    def session_nonce(self, own_nonce: bytes, peer_nonce: bytes) -> bytes:
        """sn[i] = nonce_a | nonce_b, nonce_a from the host that was A for ss[0] (§3.5)."""
        return own_nonce + peer_nonce if self.original_a else peer_nonce + own_nonce


class ResumptionCache:
    """Bounded, expiring, single-use store of session secrets (§3.5)."""

    def __init__(self, max_entries: int = 256, lifetime: float = 600.0) -> None:
        if max_entries < 1 or lifetime <= 0:
            raise ValueError("max_entries must be >= 1 and lifetime > 0")
        self.max_entries = max_entries
        self.lifetime = lifetime
        self._by_peer: OrderedDict[Hashable, CachedSession] = OrderedDict()
        self._by_half: dict[tuple[int, bytes], Hashable] = {}

    def __len__(self) -> int:
        return len(self._by_peer)

    def __contains__(self, peer: object) -> bool:
        return peer in self._by_peer

    def peek(self, peer: Hashable) -> CachedSession | None:
        """The entry for ``peer`` without taking it (tests, diagnostics)."""
        return self._by_peer.get(peer)

    def store(
        self,
        *,
        peer: Hashable,
        tep_id: int,
        secret: bytes,
        index: int,
        original_a: bool,
        aead_id: int,
        now: float,
    ) -> CachedSession:
        """Cache ss[index] for ``peer``, replacing its older entry (one chain per peer)."""
        self.expire(now)
        self.discard(peer)
        entry = CachedSession(peer, tep_id, secret, index, original_a, aead_id, now + self.lifetime)
        while len(self._by_peer) >= self.max_entries:
            oldest = next(iter(self._by_peer))
            logger.debug("tcpcrypt resumption cache full: evicting %r", oldest)
            self.discard(oldest)
        self._by_peer[peer] = entry
        self._by_half[(tep_id, entry.peer_half)] = peer
        return entry

    def take_for_peer(self, peer: Hashable, tep_id: int, now: float) -> CachedSession | None:
        """Active opener: remove and return the entry to offer to ``peer`` with ``tep_id``."""
        entry = self._by_peer.get(peer)
        if entry is None or entry.tep_id != tep_id:
            return None
        self.discard(peer)
        return entry if entry.expires > now else None

    def take_by_half(self, tep_id: int, half: bytes, now: float) -> CachedSession | None:
        """Passive opener: remove and return the entry the peer's identifier half names."""
        peer = self._by_half.get((tep_id, bytes(half)))
        if peer is None:
            return None
        entry = self._by_peer[peer]
        self.discard(peer)
        return entry if entry.expires > now else None

    def discard(self, peer: Hashable) -> bool:
        """Erase ``peer``'s entry (the §3.5 "flush" control); True if there was one."""
        entry = self._by_peer.pop(peer, None)
        if entry is None:
            return False
        self._by_half.pop((entry.tep_id, entry.peer_half), None)
        return True

    def discard_entry(self, entry: CachedSession) -> bool:
        """Erase exactly ``entry`` if it is still cached (not a newer one for its peer)."""
        if self._by_peer.get(entry.peer) is entry:
            return self.discard(entry.peer)
        return False

    def expire(self, now: float) -> int:
        """Drop every entry whose lifetime has passed; returns how many."""
        stale = [peer for peer, entry in self._by_peer.items() if entry.expires <= now]
        for peer in stale:
            self.discard(peer)
        return len(stale)

    def clear(self) -> None:
        self._by_peer.clear()
        self._by_half.clear()


def split_suboption_data(data: bytes) -> tuple[bytes, bytes]:
    """(identifier half, nonce) of a resumption suboption's data (Figs. 2, 3)."""
    if not RESUME_HALF_LEN <= len(data) <= MAX_SUBOPTION_DATA:
        raise ResumptionError(
            f"resumption suboption data of {len(data)} bytes, expected 9..17 (RFC 8548 §3.5)"
        )
    return bytes(data[:RESUME_HALF_LEN]), bytes(data[RESUME_HALF_LEN:])


def match_resumption(
    pending: CachedSession | None, tep_id: int, local_data: bytes, peer_data: bytes
) -> CachedSession | None:
    """Decide whether this connection resumes ``pending`` (returned) or is fresh (None).

    Resumed only when this host sent a resumption suboption for this TEP and the peer sent one
    with the other half of the same identifier (§3.2, §3.5). Peer data that does not match an
    offer we made raises ``ResumptionError``: §3.5 makes the active opener ignore that suboption
    and, when it was the only one, disable TCP-ENO, a decision for the ENO layer; a core that is
    nonetheless created refuses to run rather than guess keys.
    """
    if pending is None or pending.tep_id != tep_id or not local_data or not peer_data:
        return None  # fresh key exchange: peer answered v = 0, or we never offered
    half, _ = split_suboption_data(peer_data)
    if half != pending.peer_half:
        raise ResumptionError("peer's resumption identifier does not match ours (RFC 8548 §3.5)")
    return pending
