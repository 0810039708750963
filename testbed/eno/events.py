"""What the ENO negotiation reports: outcomes and SYN-data verdicts.

Every event is a small frozen dataclass under ``EnoEvent``. A connection has exactly one
outcome: ``Negotiated`` (encryption enabled, RFC 8547 §4.6), ``Fallback`` (plain TCP,
§4.6) or ``Aborted`` (the connection must be reset: §4.7 SYN-data rules, or the optional
mandatory-encryption mode).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

from testbed.eno.option import GlobalSuboption, TepSuboption
from testbed.teps.base import Role


class FallbackReason(enum.Enum):
    """Why encryption was disabled. Peer- and path-caused reasons follow RFC 8547 §4.6."""

    # Local decisions (this end never sent, or stopped sending, ENO).
    DISABLED_BY_CONFIG = "disabled_by_config"  # ENO switched off for this connection
    LOCAL_DISABLE = "local_disable"  # disabled through the API before the handshake ended
    # §4.6 exception: the active opener left ENO out of a SYN retransmission after the
    # configured number of unanswered SYNs with ENO (a path that drops SYNs bearing it).
    SYN_RETRANSMISSION = "syn_retransmission"
    NO_OPTION_SPACE = "no_option_space"  # the segment had no room for ENO (40 bytes, §4.4)
    TFO_CONFLICT = "tfo_conflict"  # outgoing SYN had a non-empty TFO option (§4.7 MUST NOT)
    SYN_DATA_CONFLICT = "syn_data_conflict"  # outgoing SYN data the SYN TEP does not define (§4.7)
    # §4.6 rule 1: a segment up to and including the first received ACK lacked ENO.
    NO_ENO_IN_SYN = "no_eno_in_syn"  # peer SYN-only without ENO (or peer has no ENO)
    NO_ENO_IN_SYNACK = "no_eno_in_synack"  # stripped on the way back (Figure 11)
    NO_ENO_IN_ACK = "no_eno_in_ack"  # first ACK segment without ENO (e.g. stripped from A's ACK)
    MULTIPLE_ENO = "multiple_eno"  # several ENO options in a SYN count as none (§4.1)
    MALFORMED_OPTION = "malformed_option"  # ill-formed SYN-form option (§4.4, §4.6 rule 1)
    # §4.6 rule 2: no valid TEP identifier.
    VACUOUS_OPTION = "vacuous_option"  # either SYN carried no TEP id at all (§4.6)
    NO_COMMON_TEP = "no_common_tep"  # TEP ids offered, none valid for both (§4.5)
    # §4.6 rule 3: incompatible global suboption.
    SAME_B_BIT = "same_b_bit"  # both ends sent the same b (role conflict, §4.3, §8.1 echo)
    APP_AWARE_REQUIRED = "app_aware_required"  # mandatory application-aware mode, peer a=0 (§4.2)
    # Interpretation: §4.6 forbids altering a SYN-form option in retransmissions or between the
    # SYN and SYN-ACK of a simultaneous open; when the peer does, no transcript is well-defined.
    SYN_OPTION_CHANGED = "syn_option_changed"


class AbortReason(enum.Enum):
    """Why the TCP connection must be aborted (RFC 8547 §4.7)."""

    MANDATORY_ENCRYPTION = "mandatory_encryption"  # §4.7: optional mode, ENO failure aborts
    SYN_DATA_MISINTERPRETED = "syn_data_misinterpreted"  # our SYN data ACKed, SYN TEP lost
    SYN_DATA_UNCONFIRMED = "syn_data_unconfirmed"  # SYN-only data sent, SYN-ACK without ENO


class DiscardReason(enum.Enum):
    """Why data of a received SYN+ENO segment MUST be discarded (RFC 8547 §4.7, four cases)."""

    ENO_FAILED = "eno_failed"
    NOT_NEGOTIATED_TEP = "not_negotiated_tep"  # the segment's SYN TEP lost
    NO_SYN_DATA_DEFINED = "no_syn_data_defined"  # the negotiated TEP defines no SYN data
    CONFLICTING_OPTION = "conflicting_option"  # e.g. a non-empty TFO option


@dataclass(frozen=True)
class EnoEvent:
    """Base class of everything the negotiation reports."""


@dataclass(frozen=True)
class Negotiated(EnoEvent):
    """Encryption is enabled (RFC 8547 §4.6): hand ``tep_id``, ``role`` and ``transcript``
    to the TEP (testbed.teps.base.TepContext)."""

    tep_id: int
    role: Role
    transcript: bytes  # §4.8: A's SYN ENO option | B's SYN ENO option, kind and length included
    tep_byte: int  # §5.1: session ID byte 0 = the TEP id with B's v bit
    peer_global: GlobalSuboption  # the peer's effective global suboption (a bit: §4.2 API)
    peer_suboptions: tuple[TepSuboption, ...]  # the peer's suboptions for tep_id, in order
    local_suboptions: tuple[TepSuboption, ...]  # ours for tep_id, in order
    local_global: GlobalSuboption

    @property
    def peer_data(self) -> bytes:
        """Data of the peer's last suboption for the TEP (b"" when it sent v = 0)."""
        return (self.peer_suboptions[-1].data or b"") if self.peer_suboptions else b""

    @property
    def application_aware(self) -> bool:
        """Both ends set a = 1, so a-bit extensions may be used (§8.4)."""
        return self.local_global.a and self.peer_global.a


@dataclass(frozen=True)
class Fallback(EnoEvent):
    """Encryption is disabled; the connection continues as plain TCP (RFC 8547 §4.6)."""

    reason: FallbackReason
    detail: str = ""


@dataclass(frozen=True)
class Aborted(EnoEvent):
    """The connection must be aborted (RST); ``fallback`` is the ENO failure behind it, if any."""

    reason: AbortReason
    fallback: FallbackReason | None = None
    detail: str = ""


@dataclass(frozen=True)
class SynDataAccepted(EnoEvent):
    """Data of a received SYN+ENO segment may be delivered to the negotiated TEP (§4.7)."""

    tep_id: int


@dataclass(frozen=True)
class SynDataDiscarded(EnoEvent):
    """Data of a received SYN+ENO segment MUST be dropped and not ACKed (§4.7)."""

    reason: DiscardReason


Outcome = Negotiated | Fallback | Aborted


class Outgoing(NamedTuple):
    """What the negotiator answers for an outgoing segment: the ENO option to append
    (``tcp_options.append_eno``) or None to send it plain, and the events sending it produced,
    oldest first."""

    option: bytes | None
    events: list[EnoEvent]
