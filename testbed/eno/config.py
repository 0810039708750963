"""Per-connection ENO configuration (the RFC 8547 §4.2 / §4.7 API knobs).

``teps`` is a preference list, most preferred first. On the wire the order is reversed,
because RFC 8547 §4.5 makes the *last* valid TEP id of B's SYN-form option the
negotiated one (B lists in rising priority) and §4.7 makes the last TEP id the SYN TEP.

TEP-specific judgement (is this suboption data valid? may this id be repeated? what
does a passive opener answer to a resumption offer?) belongs to the TEP, so it is
passed in as two optional callables; the defaults accept any data and refuse repeated
ids (§4.5 condition 3: repetition is only valid when the TEP defines it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from testbed.eno.errors import EnoEncodeError, LocalProtocolError
from testbed.eno.option import TepSuboption

# validator(tep_id, our suboptions for it, the peer's suboptions for it) -> valid? (§4.5)
TepValidator = Callable[[int, tuple[TepSuboption, ...], tuple[TepSuboption, ...]], bool]
# answerer(our offer, the peer's suboptions for that TEP) -> what a passive opener puts in
# its SYN-ACK for it, or None to refuse that TEP (e.g. a tcpcrypt resumption answer, RFC 8548
# §3.5). Only passive openers answer; simultaneous-open SYN-ACKs repeat the SYN (§4.6).
TepAnswerer = Callable[[TepSuboption, tuple[TepSuboption, ...]], TepSuboption | None]


def default_validator(
    tep_id: int, local: tuple[TepSuboption, ...], peer: tuple[TepSuboption, ...]
) -> bool:
    """Valid iff each side sent exactly one suboption for the id (§4.5 conditions 1 and 3)."""
    return len(local) == 1 and len(peer) == 1


@dataclass(frozen=True, kw_only=True)
class EnoConfig:
    """What one end wants from ENO on one connection. Unknown keywords are refused."""

    # Preference list, most preferred first. A bare int is a TEP id with no data (v = 0);
    # a TepSuboption carries data (v = 1), e.g. a tcpcrypt resumption offer.
    teps: tuple[TepSuboption | int, ...] = ()
    enabled: bool = True  # False: never send ENO (SYN-data discard rules still apply, §4.7)
    # §4.2: the b bit an *active* opener sends (default 0; set for simultaneous open).
    # Passive openers always send b = 1 whatever this says.
    passive_role: bool = False
    application_aware: bool = False  # §4.2 a bit, default 0
    # §4.2: disable ENO (fall back) unless the peer sets a = 1; implies a = 1 locally (§8.4).
    mandatory_application_aware: bool = False
    # §4.7 optional mode: any ENO failure aborts the connection instead of falling back.
    mandatory_encryption: bool = False
    # TEP ids whose specification defines SYN data (§4.7); none of RFC 8548's do.
    syn_data_teps: frozenset[int] = frozenset()
    # §4.7: data in SYN-only segments MUST be off by default; this is the API switch.
    allow_syn_only_data: bool = False
    # §4.7 non-default mode: unACKed SYN-only data does not abort when the SYN-ACK lacks ENO.
    tolerate_unacked_syn_data: bool = False
    # §4.6 exception: an active opener MAY drop ENO between retransmissions of a SYN-only
    # segment. None: every retransmission repeats the option (the MUST of §4.6); n >= 0:
    # the first n retransmissions repeat it, later ones go without and encryption is
    # disabled. Never with mandatory encryption, and never for a SYN that carried data.
    syn_retries_with_eno: int | None = None
    validator: TepValidator = default_validator
    answerer: TepAnswerer | None = None

    def __post_init__(self) -> None:
        ids = [o.tep_id for o in self.offers]
        if len(set(ids)) != len(ids):
            # RFC 8548 §3.5 forbids two resumption suboptions for one id; repetition in general
            # needs TEP rules (§4.5), so a preference list names each TEP once.
            raise EnoEncodeError(f"TEP ids repeated in the preference list: {ids}")
        if self.syn_retries_with_eno is not None:
            if self.syn_retries_with_eno < 0:
                raise LocalProtocolError("syn_retries_with_eno must be None or >= 0")
            if self.mandatory_encryption:
                raise LocalProtocolError(
                    "mandatory encryption never drops ENO from SYN retransmissions")

    @property
    def offers(self) -> tuple[TepSuboption, ...]:
        """The preference list as suboptions, most preferred first."""
        return tuple(t if isinstance(t, TepSuboption) else TepSuboption(t) for t in self.teps)

    @property
    def a_bit(self) -> bool:
        return self.application_aware or self.mandatory_application_aware
