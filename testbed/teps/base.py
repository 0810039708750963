"""The one interface every TCP Encryption Protocol (TEP) implements.

Theory of operation
-------------------
A TEP core is sans-IO (h11/aioquic style): it never touches a socket or a clock
of its own. The stream layer (testbed/stream.py) feeds it the bytes that arrived
on the TCP connection with ``receive_data`` and writes out whatever
``data_to_send`` returns. Time (``now``, seconds, any monotonic origin) and
randomness (``TepContext.random``) are passed in, so tests can fix every key and
nonce.

A core is created once TCP-ENO has chosen it (RFC 8547 §4.6), with the role ENO
assigned (A or B, RFC 8547 §4.2) and the negotiation transcript (RFC 8547 §4.8)
that the TEP must bind into its session ID (RFC 8547 §5.1). Role A is the end
that speaks first for both TEPs of this project (tcpcrypt Init1, TLS
ClientHello).

Events are small frozen dataclasses under ``TepEvent``. Errors are one hierarchy
under ``TepError``; ``LocalProtocolError`` means this end misused the core,
``RemoteProtocolError`` means the peer broke the protocol. After any error the
core is in an error state and every further call raises ``TepStateError``. A
core never returns unauthenticated application bytes.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class Role(enum.Enum):
    """TCP-ENO roles (RFC 8547 §4.2): A has b=0 (or opened actively), B has b=1."""

    A = "A"
    B = "B"


# ---------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TepEvent:
    """Base class of every event a TEP core emits."""


@dataclass(frozen=True)
class HandshakeComplete(TepEvent):
    """Keys are in place; ``session_id`` is the TEP's session ID (RFC 8547 §5.1)."""

    session_id: bytes
    resumed: bool = False
    early_data_accepted: bool | None = None  # None: no early data was attempted


@dataclass(frozen=True)
class DataReceived(TepEvent):
    """Authenticated application bytes, in order."""

    data: bytes
    early: bool = False  # True for TLS 0-RTT data (beyond the drafts)


@dataclass(frozen=True)
class EndOfStream(TepEvent):
    """The peer closed its direction with an authenticated end-of-stream marker."""


@dataclass(frozen=True)
class KeyUpdated(TepEvent):
    """A rekey (tcpcrypt §3.8, TLS KeyUpdate) took effect in ``direction``."""

    direction: str  # "send" or "receive"


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class TepError(Exception):
    """Base of all TEP errors. ``code`` is what goes on the wire, if anything."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class LocalProtocolError(TepError):
    """This end used the core wrongly (sending before the handshake, after close...)."""


class RemoteProtocolError(TepError):
    """The peer (or the path) broke the protocol."""


class IntegrityError(RemoteProtocolError):
    """An authentication tag or MAC did not verify: the bytes were altered."""


class TruncationError(RemoteProtocolError):
    """TCP ended (FIN or RST) before the TEP's authenticated end of stream."""


class TepStateError(LocalProtocolError):
    """A call on a core that already failed or closed."""


# ---------------------------------------------------------------------------
# The core interface and the registry
# ---------------------------------------------------------------------------


@dataclass
class TepContext:
    """Everything a TEP core is handed when ENO selects it."""

    role: Role
    transcript: bytes  # RFC 8547 §4.8 negotiation transcript
    random: Callable[[int], bytes] = os.urandom
    now: float = 0.0
    # Data the peer put in its TEP suboption (e.g. a tcpcrypt resumption identifier).
    peer_suboption_data: bytes = b""
    # Per-TEP settings (keys, caches, early data, ...); each TEP documents its keys.
    options: dict[str, Any] = field(default_factory=dict)


class TepCore(Protocol):
    """What the stream layer calls. Implemented by each TEP package."""

    @property
    def handshake_complete(self) -> bool: ...

    @property
    def session_id(self) -> bytes | None: ...

    def start(self, now: float) -> list[TepEvent]:
        """Begin the handshake (role A produces its first flight here); returns the events it
        completes: a core that has its keys at once (a resumed tcpcrypt session, RFC 8548
        §3.5) answers HandshakeComplete here, not with the next ``receive_data``."""

    def receive_data(self, data: bytes, now: float) -> list[TepEvent]:
        """Feed bytes read from TCP; returns the events they complete."""

    def send_data(self, data: bytes) -> None:
        """Queue application bytes for protection."""

    def close(self) -> None:
        """Queue the authenticated end of stream."""

    def peer_closed(self) -> list[TepEvent]:
        """TCP delivered FIN: raises ``TruncationError`` unless the TEP's end was seen."""

    def data_to_send(self) -> bytes:
        """Bytes to write to TCP now (may be empty)."""


@dataclass(frozen=True)
class TepSpec:
    """A registered TEP: its ENO identifier (RFC 8547 §4.1) and how to make a core."""

    tep_id: int  # 7-bit TEP identifier, 0x20..0x7f
    name: str
    standard: bool  # False for identifiers no RFC assigns (labelled so everywhere)
    factory: Callable[[TepContext], TepCore]
    label: str = ""  # e.g. "non-standard", "test-only", "beyond the drafts"
    explicit_only: bool = False  # never offered unless named explicitly

    def __post_init__(self) -> None:
        if not 0x20 <= self.tep_id <= 0x7F:
            raise ValueError(f"TEP id {self.tep_id:#x} outside 0x20..0x7f (RFC 8547 §4.1)")


_REGISTRY: dict[str, TepSpec] = {}


def register(spec: TepSpec) -> TepSpec:
    """Add a TEP to the registry (name and id must both be unused)."""
    for other in _REGISTRY.values():
        if other.name == spec.name or other.tep_id == spec.tep_id:
            raise ValueError(f"TEP {spec.name} ({spec.tep_id:#x}) clashes with {other.name}")
    _REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> TepSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise KeyError(f"unknown TEP {name!r} (known: {known})") from None


def by_id(tep_id: int) -> TepSpec | None:
    for spec in _REGISTRY.values():
        if spec.tep_id == tep_id:
            return spec
    return None


def registered() -> list[TepSpec]:
    return sorted(_REGISTRY.values(), key=lambda s: s.tep_id)
