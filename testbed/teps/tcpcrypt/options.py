"""tcpcrypt's keys in ``TepContext.options`` and the SYN suboption helper.

The keys (all prefixed ``tcpcrypt.``; any other ``tcpcrypt.*`` key is refused) are listed with
their meaning at the top of core.py. ``TcpcryptOptions.from_dict`` turns the dict into a
checked, keyword-only dataclass; keys without the prefix belong to other layers and are left
alone.

``local_suboption_data`` is what the ENO layer calls while building a SYN (active opener) or a
SYN-ACK (passive opener) to learn the data of the tcpcrypt TEP suboption (RFC 8548 §3.5 Figs.
2, 3): non-empty means "send this TEP with v = 1 and these bytes", empty means "v = 0, fresh".
It records what it chose in the same dict so the core, created later, knows what was sent.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, MutableMapping
from dataclasses import dataclass, fields
from typing import Any

from .constants import AEADS, DEFAULT_AEADS, MAX_CHUNK, MAX_RESUME_NONCE_LEN, RESUME_HALF_LEN
from .keys import EphemeralKey
from .resumption import MAX_SUBOPTION_DATA, CachedSession, ResumptionCache

PREFIX = "tcpcrypt."
OPT_CACHE = PREFIX + "cache"
OPT_PEER = PREFIX + "peer"
OPT_CIPHERS = PREFIX + "ciphers"
OPT_RESUME = PREFIX + "resume"
OPT_CACHE_SECRETS = PREFIX + "cache_secrets"
OPT_NONCE_LEN = PREFIX + "nonce_len"
OPT_CHUNK_SIZE = PREFIX + "chunk_size"
OPT_LOCAL_DATA = PREFIX + "local_suboption_data"
OPT_PENDING = PREFIX + "pending_session"
OPT_FIRST_DATA = PREFIX + "first_data"
OPT_EPHEMERAL = PREFIX + "ephemeral"

DEFAULT_CHUNK_SIZE = 16384


@dataclass(frozen=True, kw_only=True)
class TcpcryptOptions:
    """Per-connection settings, see core.py for what each one means."""

    cache: ResumptionCache | None = None
    peer: Hashable | None = None
    ciphers: tuple[int, ...] = DEFAULT_AEADS
    resume: bool = True
    cache_secrets: bool = True
    nonce_len: int = MAX_RESUME_NONCE_LEN
    chunk_size: int = DEFAULT_CHUNK_SIZE
    local_suboption_data: bytes = b""
    pending_session: CachedSession | None = None
    first_data: bytes = b""
    ephemeral: EphemeralKey | None = None  # role B: made ahead, used once (RFC 8548 §3.3, §8)

    def __post_init__(self) -> None:
        if not isinstance(self.first_data, bytes):
            raise ValueError(f"{OPT_FIRST_DATA} must be bytes")
        if not self.ciphers or any(c not in AEADS for c in self.ciphers):
            raise ValueError(f"{OPT_CIPHERS} must list known AEAD ids (RFC 8548 §7 Table 5)")
        if len(set(self.ciphers)) != len(self.ciphers) or len(self.ciphers) > 0xFF:
            raise ValueError(f"{OPT_CIPHERS} must be at most 255 distinct ids (§4.1 nciphers)")
        if not 0 <= self.nonce_len <= MAX_RESUME_NONCE_LEN:
            raise ValueError(f"{OPT_NONCE_LEN} must be 0..8 (RFC 8548 §3.5)")
        if not 1 <= self.chunk_size <= MAX_CHUNK:
            raise ValueError(f"{OPT_CHUNK_SIZE} must be 1..{MAX_CHUNK} (clen < 2^16, §3.6)")
        if self.cache is not None and not isinstance(self.cache, ResumptionCache):
            raise ValueError(f"{OPT_CACHE} must be a ResumptionCache")
        if len(self.local_suboption_data) > MAX_SUBOPTION_DATA:
            raise ValueError(f"{OPT_LOCAL_DATA} longer than 17 bytes (§3.5)")
        if self.ephemeral is not None and not isinstance(self.ephemeral, EphemeralKey):
            raise ValueError(f"{OPT_EPHEMERAL} must be an EphemeralKey")

    def check_role(self, role_a: bool, tep_id: int) -> None:
        """Refuse the options that belong to the other ENO role, or to another TEP."""
        if self.first_data and not role_a:
            raise ValueError(f"{OPT_FIRST_DATA} is for role A (the active opener) only")
        if self.ephemeral is not None and role_a:
            raise ValueError(f"{OPT_EPHEMERAL} is for role B only (role A's key is in Init1)")
        if self.ephemeral is not None and self.ephemeral.params.tep_id != tep_id:
            raise ValueError(f"{OPT_EPHEMERAL} was made for another TEP "
                             f"({self.ephemeral.params.tep_id:#x}, not {tep_id:#x})")

    @classmethod
    def from_dict(cls, options: Mapping[str, Any]) -> TcpcryptOptions:
        names = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in options.items():
            if not key.startswith(PREFIX):
                continue
            name = key[len(PREFIX) :]
            if name not in names:
                raise ValueError(f"unknown tcpcrypt option {key!r} (known: {sorted(names)})")
            kwargs[name] = tuple(value) if name == "ciphers" else value
        return cls(**kwargs)


def local_suboption_data(
    options: MutableMapping[str, Any],
    tep_id: int,
    random: Callable[[int], bytes],
    now: float,
    peer_data: bytes | None = None,
) -> bytes:
    """Data for this host's tcpcrypt suboption with ``tep_id`` (RFC 8548 §3.5).

    ``peer_data`` None: we are the active opener building the SYN; offer resumption if the cache
    holds a secret for ``options["tcpcrypt.peer"]`` and this TEP. Otherwise we are the passive
    opener and ``peer_data`` is what the SYN carried for this TEP; agree to resume if it names a
    cached secret. Either way a used entry leaves the cache. One call draws ``nonce_len`` bytes
    from ``random`` (only when it returns non-empty data).
    """
    opts = TcpcryptOptions.from_dict(options)
    if opts.cache is None or not opts.resume:
        return b""  # §3.5: the application may refuse resumption per connection
    entry: CachedSession | None
    if peer_data is None:
        if opts.peer is None:
            return b""
        entry = opts.cache.take_for_peer(opts.peer, tep_id, now)
    elif RESUME_HALF_LEN <= len(peer_data) <= MAX_SUBOPTION_DATA:
        entry = opts.cache.take_by_half(tep_id, peer_data[:RESUME_HALF_LEN], now)
    else:
        # §3.5: v = 1 with fewer than 9 bytes is an offer of fresh key exchange.
        entry = None
    if entry is None:
        return b""
    nonce = random(opts.nonce_len)
    if len(nonce) != opts.nonce_len:
        raise ValueError("random() returned the wrong number of bytes")
    data = entry.own_half + nonce
    options[OPT_LOCAL_DATA] = data
    options[OPT_PENDING] = entry
    return data
