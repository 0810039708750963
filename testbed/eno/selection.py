"""Pure negotiation rules of RFC 8547: options to send, compatibility, TEP selection.

No state lives here; ``negotiation.EnoNegotiator`` calls these on the SYN-form options it
has seen. Each function is a direct reading of one RFC paragraph, cited inline.
"""

from __future__ import annotations

from dataclasses import dataclass

from testbed.eno.config import EnoConfig
from testbed.eno.errors import EnoEncodeError, EnoParseError
from testbed.eno.events import FallbackReason, Negotiated
from testbed.eno.option import EnoOption, GlobalSuboption, TepSuboption
from testbed.eno.tcp_options import find_eno
from testbed.teps.base import Role


def active_syn_option(config: EnoConfig) -> EnoOption:
    """The SYN-form option of an active opener.

    The preference list is sent reversed: B lists TEPs in increasing priority (§4.5) and
    the last one is the SYN TEP (§4.7), so the most preferred TEP goes last. The global
    suboption is left implicit (0x00, §4.2) unless b or a is set, which saves a byte.
    """
    b, a = config.passive_role, config.a_bit
    global_ = GlobalSuboption(b=b, a=a) if (a or b) else None
    return EnoOption.build(reversed(config.offers), global_)


def passive_global(config: EnoConfig) -> GlobalSuboption:
    """A passive opener MUST send b = 1 in an explicit global suboption (§4.2, §4.6)."""
    return GlobalSuboption(b=True, a=config.a_bit)


def incompatibility(
    local: GlobalSuboption, peer: GlobalSuboption, config: EnoConfig
) -> FallbackReason | None:
    """§4.6 rule 3: the same b on both sides, or mandatory application-aware and peer a = 0."""
    if local.b == peer.b:
        return FallbackReason.SAME_B_BIT
    if config.mandatory_application_aware and not peer.a:
        return FallbackReason.APP_AWARE_REQUIRED
    return None


def passive_answer(config: EnoConfig, peer: EnoOption) -> TepSuboption | None:
    """The one TEP suboption a passive opener puts in its SYN-ACK, or None.

    §4.5: a passive opener SHOULD send a single TEP id and SHOULD make it valid, so it
    takes its most preferred TEP that the peer offered and that the validator accepts.
    """
    for offer in config.offers:
        peer_subs = peer.suboptions_for(offer.tep_id)
        if not peer_subs:
            continue
        answer = config.answerer(offer, peer_subs) if config.answerer else offer
        if answer is None:
            continue
        if answer.tep_id != offer.tep_id:
            raise EnoEncodeError(f"answerer turned TEP {offer.tep_id:#x} into {answer.tep_id:#x}")
        if config.validator(offer.tep_id, (answer,), peer_subs):
            return answer
    return None


def select_tep(
    a_option: EnoOption, b_option: EnoOption, local_role: Role, config: EnoConfig
) -> TepSuboption | None:
    """§4.5: the negotiated TEP is the last valid TEP id in B's SYN-form option.

    Valid means both options carry the id (matching ignores v, RFC 8548 §3.2) and the
    TEP's validator accepts the data and any repetition. The result is B's last suboption
    for that id, whose v bit goes into the session ID (§5.1).
    """
    local, peer = (a_option, b_option) if local_role is Role.A else (b_option, a_option)
    for sub in reversed(b_option.teps):
        local_subs = local.suboptions_for(sub.tep_id)
        peer_subs = peer.suboptions_for(sub.tep_id)
        if local_subs and peer_subs and config.validator(sub.tep_id, local_subs, peer_subs):
            return sub
    return None


@dataclass(frozen=True)
class SynEno:
    """The SYN-form ENO option of a received SYN segment, or why there is none usable."""

    option: EnoOption | None
    raw: bytes  # kind, length and contents as in the header (for the transcript, §4.8)
    problem: FallbackReason | None
    detail: str = ""

    @property
    def present(self) -> bool:
        """A usable ENO option was there. Several count as none (§4.1) and an ill-formed
        one is ignored (§4.4), so both read as "without an ENO option" for §4.7."""
        return self.option is not None


def read_syn_eno(options: bytes, missing: FallbackReason) -> SynEno:
    """Find and strictly parse the ENO option of a received SYN or SYN-ACK."""
    found = find_eno(options)
    if not found:
        return SynEno(None, b"", missing, "no ENO option")
    if len(found) > 1:
        # §4.1: behave as though the segment had no ENO option and disable encryption.
        return SynEno(None, b"", FallbackReason.MULTIPLE_ENO, f"{len(found)} ENO options")
    try:
        option = found[0].syn_form()
    except EnoParseError as exc:
        # §4.4: an ill-formed SYN-form option is ignored and encryption disabled.
        return SynEno(None, found[0].encode(), FallbackReason.MALFORMED_OPTION, str(exc))
    return SynEno(option, found[0].encode(), None)


def negotiation_problem(
    local: EnoOption, peer: EnoOption, config: EnoConfig
) -> FallbackReason | None:
    """§4.6 rules 2 and 3 applied to both SYN-form options (rule 1 is ``read_syn_eno``)."""
    reason = incompatibility(local.global_suboption, peer.global_suboption, config)
    if reason is not None:
        return reason
    if local.vacuous or peer.vacuous:
        return FallbackReason.VACUOUS_OPTION  # §4.6: a vacuous option means no valid TEP
    return None


def make_negotiated(
    local_role: Role,
    local: tuple[EnoOption, bytes],
    peer: tuple[EnoOption, bytes],
    chosen: TepSuboption,
) -> Negotiated:
    """Build the outcome; the transcript is A's option then B's, as sent on the wire (§4.8)."""
    (local_opt, local_raw), (peer_opt, peer_raw) = local, peer
    a_raw, b_raw = (local_raw, peer_raw) if local_role is Role.A else (peer_raw, local_raw)
    return Negotiated(
        tep_id=chosen.tep_id,
        role=local_role,
        transcript=a_raw + b_raw,
        tep_byte=chosen.byte,
        peer_global=peer_opt.global_suboption,
        peer_suboptions=peer_opt.suboptions_for(chosen.tep_id),
        local_suboptions=local_opt.suboptions_for(chosen.tep_id),
        local_global=local_opt.global_suboption,
    )
