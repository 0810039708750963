"""The application-facing types of testbed.stream: policies, configuration, what a stream
says about itself, the errors it raises, and per-host TEP providers.

``StreamConfig.settings`` turns a configuration into the hook's per-port ``Settings``
(testbed/eno/control.py); everything that runs a connection lives in testbed/stream.py,
which re-exports these names.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from testbed.eno.control import DEFAULT_NAME, Result, Settings
from testbed.teps import base, enotest
from testbed.teps.base import HandshakeComplete, Role, TepSpec

Addr = tuple[str, int]
UNENCRYPTED_TEPS = frozenset({enotest.TEP_NAME})  # negotiated, but protect nothing
enotest.register()  # explicit_only: registered, but offered only when named


class Policy(enum.Enum):
    OFF = "off"
    OPPORTUNISTIC = "opportunistic"
    REQUIRED = "required"


class StreamError(Exception):
    """Base of the stream layer's errors; ``local_port`` names the connection, if one existed."""

    local_port: int | None = None


class EncryptionRequiredError(StreamError):
    """Policy ``required`` and ENO did not negotiate a TEP; the connection was reset."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"encryption required but not negotiated: {reason} {detail}".strip())
        self.reason = reason


class TepFailure(StreamError):
    """The TEP failed (integrity, protocol, truncation, timeout); the connection was reset."""


class IntegrityFailure(TepFailure):
    """Received bytes did not authenticate."""


class PeerRefusedTep(TepFailure):
    """The peer reset or closed the connection before sending one TEP byte."""


class SplitNegotiationError(StreamError):
    """This end fell back but the peer enabled encryption (ENO stripped from A's ACK only)."""


class UndecidedEnoError(StreamError):
    """Our SYN-ACK carried ENO but the hook never judged the peer's first ACK segment (RFC 8547
    §4.6), so the peer may have enabled encryption: the connection was reset rather than its
    bytes taken for plaintext."""


class NoSessionIdError(StreamError):
    """RFC 8547 §5.1: there is no session ID (ENO failed, or no TEP handshake yet)."""


class TepProvider(Protocol):
    """Per-host state a TEP needs; register one per TEP name."""

    def suboption_data(self, spec: TepSpec, *, active: bool, peer: Addr | None) -> bytes | None:
        """Data for our SYN-form suboption (e.g. a resumption offer), or None for v = 0."""

    def context_options(
        self, spec: TepSpec, *, role: Role, peer: Addr, result: Result
    ) -> dict[str, Any]:
        """``TepContext.options`` for a connection that negotiated ``spec``."""


def _expected(provider: TepProvider | None, spec: TepSpec, data: bytes | None) -> bytes | None:
    """A provider's optional ``expected_peer_data(spec, data)``: the prefix the peer's answer
    to our suboption data must carry (RFC 8548 §3.5), or None for no constraint."""
    method = getattr(provider, "expected_peer_data", None)
    if method is None or not data:
        return None
    prefix: bytes | None = method(spec, data)
    return prefix


_PROVIDERS: dict[str, TepProvider] = {}


def register_provider(name: str, provider: TepProvider) -> None:
    _PROVIDERS[name] = provider


@dataclass(frozen=True, kw_only=True)
class StreamConfig:
    policy: Policy = Policy.OPPORTUNISTIC
    # TEP names, most preferred first; () = every registered TEP that is not explicit_only.
    teps: tuple[str, ...] = ()
    passive_role: bool = False  # b = 1 as an active opener (simultaneous open, §4.2, §4.3)
    application_aware: bool = False  # a bit (§4.2)
    mandatory_application_aware: bool = False
    tep_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    providers: Mapping[str, TepProvider] = field(default_factory=dict)
    hook_name: str = DEFAULT_NAME
    eno_wait: float = 2.0  # how long to wait for the hook's verdict
    handshake_timeout: float = 10.0
    retry_plain: bool = True  # opportunistic A: reconnect without ENO if the TEP is refused
    # Opportunistic A: reconnect without ENO when the SYN with ENO is answered by a RST
    # (a box rejecting unknown options; connect() docstring). Costs a closed port one RTT.
    retry_plain_after_reset: bool = True
    # Opportunistic A: SYN retransmissions that keep ENO before it is dropped (RFC 8547 §4.6
    # exception, for paths that drop SYNs bearing unknown options). 2 follows Linux MPTCP,
    # which falls back after the SYN+MP_CAPABLE went unanswered for 2 retransmissions. The
    # SYN without ENO leaves ~3 s after the first where the kernel spaces its first SYN
    # retransmissions 1 s apart (net.ipv4.tcp_syn_linear_timeouts), ~7 s where it doubles
    # the 1 s timeout. None: keep ENO in every retransmission. Required never drops it.
    syn_retries_with_eno: int | None = 2
    # A server hands the stream over once 0-RTT data arrived, before the TEP handshake ends,
    # so the application can answer at 0.5-RTT (TLS 0-RTT, RFC 8446 §2.3; beyond the drafts).
    # The session ID is then None until a later recv() completes the handshake.
    early_handoff: bool = False
    # TEP names whose (variant) specification defines SYN data (RFC 8547 §4.7: off by default,
    # on only through this API): the listener accepts SYN data for them, and a stream opened
    # with testbed/synstream.py puts its SYN TEP's first flight on the SYN.
    syn_data: tuple[str, ...] = ()

    def specs(self) -> list[TepSpec]:
        if not self.teps:
            return [s for s in base.registered() if not s.explicit_only]
        return [base.get(name) for name in self.teps]

    def provider(self, name: str) -> TepProvider | None:
        return self.providers.get(name) or _PROVIDERS.get(name)

    def settings(self, *, active: bool, peer: Addr | None) -> Settings:
        teps, expect = [], []
        for spec in self.specs():
            provider = self.provider(spec.name)
            data = provider.suboption_data(spec, active=active, peer=peer) if provider else None
            teps.append((spec.tep_id, data or None))
            prefix = _expected(provider, spec, data) if active else None
            if prefix:
                expect.append((spec.tep_id, prefix))
        return Settings(
            teps=tuple(teps), passive_role=self.passive_role and active,
            application_aware=self.application_aware,
            mandatory_app_aware=self.mandatory_application_aware,
            mandatory=self.policy is Policy.REQUIRED, expect=tuple(expect),
            syn_retries=self.syn_retries_with_eno
            if active and self.policy is Policy.OPPORTUNISTIC else None,
            syn_data=tuple(base.get(name).tep_id for name in self.syn_data),
        )


@dataclass
class StreamInfo:
    """What a stream says about itself (the probe's per-connection keys come from here)."""

    policy: str
    encrypted: bool = False
    eno: str | None = None  # "negotiated" | "fallback" | "aborted" | None (ENO not used)
    tep: str | None = None
    tep_id: int | None = None
    tep_label: str | None = None
    role: str | None = None
    fallback_reason: str | None = None
    detail: str = ""
    session_id: bytes | None = None
    transcript: bytes = b""
    peer_application_aware: bool | None = None
    resumed: bool | None = None  # the TEP handshake resumed an earlier session
    early_data_accepted: bool | None = None  # None: no 0-RTT data was attempted
    # Streams with SYN data (testbed/synstream.py): "acked" / "not_acked" (the active end's
    # SYN data, as its SYN-ACK acknowledged it), "accepted" (the passive end used it).
    syn_data: str | None = None
    phases: dict[str, float] = field(default_factory=dict)  # name -> perf_counter seconds


def note_handshake(info: StreamInfo, done: HandshakeComplete) -> None:
    """Record a finished TEP handshake in ``info`` (session ID, resumption, 0-RTT)."""
    info.phases.setdefault("tep_handshake_done", time.perf_counter())
    info.session_id = done.session_id
    info.resumed = done.resumed
    info.early_data_accepted = done.early_data_accepted
