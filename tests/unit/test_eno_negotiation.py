"""Two ENO endpoints in memory over a fake path that can strip, echo or rewrite options: the
normal handshake, stripping middleboxes, roles, TEP sets and modes (retransmissions, option
space and simultaneous open: test_eno_negotiation_edges.py).

Every segment is built the way the NFQUEUE hook will build it: a kernel-like options
block, plus the ENO option the negotiator returned (``append_eno``), through a
"middlebox" function, into the other end's ``receive_*`` (tests/unit/eno_negotiation_support.py).
"""

from __future__ import annotations

import pytest

from testbed.eno.config import EnoConfig
from testbed.eno.errors import EnoEncodeError, EnoStateError, LocalProtocolError
from testbed.eno.events import Aborted, AbortReason, Fallback, FallbackReason, Negotiated
from testbed.eno.negotiation import EnoNegotiator, State
from testbed.eno.option import EnoOption, GlobalSuboption, TepSuboption
from testbed.eno.tcp_options import remove_eno
from testbed.teps.base import Role
from tests.unit.eno_negotiation_support import (
    LINUX_ACK,
    LINUX_SYN,
    Box,
    X,
    Y,
    Z,
    eno_of,
    fallback_reason,
    make,
    negotiated,
    three_way,
    wire,
)

SMALL_SYN = bytes.fromhex("020405b4" "0402" "01" "030307")  # no timestamps: 10 bytes
RESUME = bytes(range(17))


def strip(*names: str) -> Box:
    """A middlebox that removes ENO from the named segments only."""
    return lambda name, options: remove_eno(options) if name in names else options


# ---------------------------------------------------------------------------
# The normal three-way handshake (RFC 8547 §4.6, Figure 9)
# ---------------------------------------------------------------------------


def test_normal_open_matches_worked_encoding() -> None:
    a = make(EnoConfig(teps=(Z, X)), active=True)
    b = make(EnoConfig(teps=(Z,)), active=False)
    syn, synack, ack, reply = three_way(a, b)
    assert syn == LINUX_SYN + bytes.fromhex("45042123")  # docs/protocols.md §1.7: A's SYN
    assert synack == LINUX_SYN + bytes.fromhex("45040123")  # B picks X25519
    assert ack == LINUX_ACK + bytes.fromhex("4502" "0000")  # A's third segment (§4.6), padded
    assert reply == LINUX_ACK  # B has received a non-SYN segment: no more ENO
    na, nb = negotiated(a), negotiated(b)
    assert (na.tep_id, nb.tep_id) == (Z, Z)
    assert (na.role, nb.role) == (Role.A, Role.B)
    assert na.transcript == nb.transcript == bytes.fromhex("45042123" "45040123")  # §4.8
    assert na.tep_byte == nb.tep_byte == 0x23
    assert na.peer_global == GlobalSuboption(b=True) and nb.peer_global == GlobalSuboption()
    assert a.neg.state is State.ENABLED and b.neg.state is State.ENABLED


def test_active_echoes_eno_until_a_non_syn_segment_arrives() -> None:
    a = make(EnoConfig(teps=(Z,)), active=True)
    b = make(EnoConfig(teps=(Z,)), active=False)
    b.neg.receive_syn(wire(b"", a.sent(a.neg.send_syn())))
    a.collect(a.neg.receive_synack(wire(b"", b.sent(b.neg.send_synack()))))
    assert a.sent(a.neg.send_ack(LINUX_ACK)) == bytes.fromhex("4502")
    assert a.neg.state is State.ENABLED_ECHO and a.neg.encryption_enabled
    # A data segment: still ENO (§4.6).
    assert a.sent(a.neg.send_ack(LINUX_ACK)) == bytes.fromhex("4502")
    a.neg.receive_ack(LINUX_ACK)  # B's first non-SYN segment, with or without ENO
    assert a.neg.state is State.ENABLED
    assert a.sent(a.neg.send_ack(LINUX_ACK)) is None


def test_passive_picks_its_most_preferred_common_tep() -> None:
    a = make(EnoConfig(teps=(Z, Y, X)), active=True)
    b = make(EnoConfig(teps=(X, Y)), active=False)  # B prefers X although A prefers Z
    syn, synack, _, _ = three_way(a, b)
    assert eno_of(syn) == bytes.fromhex("4505212223")  # A's list reversed: most preferred last
    assert eno_of(synack) == bytes.fromhex("45040121")  # one TEP id only (§4.5 SHOULD)
    assert negotiated(a).tep_id == negotiated(b).tep_id == X


def test_a_picks_last_valid_tep_in_b_list() -> None:
    # A SYN-ACK may list several TEPs (§4.5 allows it): the last one valid for A wins.
    a = make(EnoConfig(teps=(X, Y)), active=True)
    a.neg.send_syn()
    a.neg.receive_synack(bytes.fromhex("4505012221"))  # B lists Y then X
    assert a.neg.selected_tep == X
    a = make(EnoConfig(teps=(X, Y)), active=True)
    a.neg.send_syn()
    a.neg.receive_synack(EnoOption.build([X, Y, Z], GlobalSuboption(b=True)).encode())
    assert a.neg.selected_tep == Y  # Z is last but A never offered it


def test_resumption_accepted_by_answerer() -> None:
    def answer(offer: TepSuboption, peer: tuple[TepSuboption, ...]) -> TepSuboption | None:
        if peer[-1].data and len(peer[-1].data) >= 9:  # RFC 8548 §3.5: 9+ bytes = resumption
            return TepSuboption(offer.tep_id, bytes(reversed(peer[-1].data)))
        return offer

    a = make(EnoConfig(teps=(TepSuboption(Z, RESUME), X)), active=True)
    b = make(EnoConfig(teps=(Z,), answerer=answer), active=False)
    # A 21-byte offer does not fit beside Linux's 20 bytes of SYN options
    # (docs/platform.md §6.11), so these SYNs carry MSS, SACK-permitted and window scale only.
    syn, synack, _, _ = three_way(a, b, syn_base=SMALL_SYN)
    assert eno_of(syn) == bytes.fromhex("451521a3") + RESUME  # docs/protocols.md §1.7, data last
    assert eno_of(synack) == bytes.fromhex("451501a3") + bytes(reversed(RESUME))
    na, nb = negotiated(a), negotiated(b)
    assert na.tep_byte == nb.tep_byte == 0xA3  # B's v bit goes into the session ID (§5.1)
    assert na.peer_data == bytes(reversed(RESUME)) and nb.peer_data == RESUME
    assert na.transcript == nb.transcript == eno_of(syn) + eno_of(synack)


def test_resumption_declined_by_default() -> None:
    a = make(EnoConfig(teps=(TepSuboption(Z, RESUME),)), active=True)
    b = make(EnoConfig(teps=(Z,)), active=False)
    _, synack, _, _ = three_way(a, b, syn_base=SMALL_SYN)
    assert eno_of(synack) == bytes.fromhex("45040123")  # docs/protocols.md §1.7: "B declines"
    assert negotiated(a).tep_byte == 0x23 and negotiated(b).peer_data == RESUME


def test_answerer_may_not_change_the_tep() -> None:
    b = make(EnoConfig(teps=(Z,), answerer=lambda o, p: TepSuboption(X)), active=False)
    with pytest.raises(EnoEncodeError):
        b.neg.receive_syn(bytes.fromhex("450323"))
    assert b.neg.state is State.ERROR


# ---------------------------------------------------------------------------
# Stripping middleboxes (RFC 8547 §4.6 rule 1, Figure 11, §8.1)
# ---------------------------------------------------------------------------

# Each end can only report what it saw, so the reasons differ; the state must agree.
STRIPPING = [
    ("syn", FallbackReason.NO_ENO_IN_SYNACK, FallbackReason.NO_ENO_IN_SYN),
    ("synack", FallbackReason.NO_ENO_IN_SYNACK, FallbackReason.NO_ENO_IN_ACK),
    ("every segment", FallbackReason.NO_ENO_IN_SYNACK, FallbackReason.NO_ENO_IN_SYN),
]


@pytest.mark.parametrize(
    ("where", "reason_a", "reason_b"), STRIPPING, ids=[s[0] for s in STRIPPING]
)
def test_stripping_falls_back_at_both_ends(
    where: str, reason_a: FallbackReason, reason_b: FallbackReason
) -> None:
    box = strip("syn", "synack", "ack", "data_b") if where == "every segment" else strip(where)
    a = make(EnoConfig(teps=(Z,)), active=True)
    b = make(EnoConfig(teps=(Z,)), active=False)
    syn, synack, ack, _ = three_way(a, b, box)
    assert a.neg.state is State.DISABLED and b.neg.state is State.DISABLED
    assert (fallback_reason(a), fallback_reason(b)) == (reason_a, reason_b)
    assert ack == LINUX_ACK  # A disabled: its third segment carries no ENO (Figure 11)
    assert len(a.outcomes) == len(b.outcomes) == 1


def test_stripping_first_ack_only_splits_the_ends() -> None:
    """RFC 8547 §4.6 makes A enable on the SYN-ACK, B decide on A's first ACK. A path that
    strips ENO from non-SYN segments only therefore leaves A encrypting and B in plain
    TCP: the "type-2 failure" of §9, which only the TEP handshake can detect."""
    a = make(EnoConfig(teps=(Z,)), active=True)
    b = make(EnoConfig(teps=(Z,)), active=False)
    three_way(a, b, strip("ack"))
    assert negotiated(a).tep_id == Z
    assert fallback_reason(b) is FallbackReason.NO_ENO_IN_ACK
    assert b.neg.state is State.DISABLED


def test_first_ack_with_tep_contents_is_presence_only() -> None:
    a = make(EnoConfig(teps=(Z,)), active=True)
    b = make(EnoConfig(teps=(Z,)), active=False)
    b.neg.receive_syn(wire(b"", a.sent(a.neg.send_syn())))
    a.neg.receive_synack(wire(b"", b.sent(b.neg.send_synack())))
    ack = a.sent(a.neg.send_ack(contents=b"\x07"))  # §10: A's first ACK MAY carry TEP data
    assert ack == bytes.fromhex("450307")
    assert isinstance(b.neg.receive_ack(ack + bytes.fromhex("4502"))[0], Negotiated)


def test_middlebox_echoing_the_syn_option() -> None:
    # §8.1: load balancers that echo A's option back make both b bits 0.
    a = make(EnoConfig(teps=(Z,)), active=True)
    syn = a.sent(a.neg.send_syn(LINUX_SYN))
    assert syn is not None
    a.neg.receive_synack(wire(LINUX_SYN, syn))
    assert fallback_reason(a) is FallbackReason.SAME_B_BIT
    assert a.sent(a.neg.send_ack(LINUX_ACK)) is None


# ---------------------------------------------------------------------------
# Roles, TEP sets, application-aware and mandatory modes (RFC 8547 §4.2-§4.6)
# ---------------------------------------------------------------------------


def test_active_b_bit_meets_passive_opener() -> None:
    a = make(EnoConfig(teps=(Z,), passive_role=True), active=True)
    b = make(EnoConfig(teps=(Z,)), active=False)
    syn, synack, _, _ = three_way(a, b)
    assert eno_of(syn) == bytes.fromhex("45040123")
    assert synack == LINUX_SYN  # B disabled on the SYN and sends no ENO
    assert fallback_reason(b) is FallbackReason.SAME_B_BIT
    assert fallback_reason(a) is FallbackReason.NO_ENO_IN_SYNACK


def test_no_common_tep() -> None:
    a = make(EnoConfig(teps=(X,)), active=True)
    b = make(EnoConfig(teps=(Z,)), active=False)
    three_way(a, b)
    assert fallback_reason(b) is FallbackReason.NO_COMMON_TEP
    assert fallback_reason(a) is FallbackReason.NO_ENO_IN_SYNACK


def test_vacuous_offer_probes_and_falls_back() -> None:
    a = make(EnoConfig(teps=()), active=True)
    b = make(EnoConfig(teps=(Z,)), active=False)
    syn, synack, _, _ = three_way(a, b)
    assert eno_of(syn) == bytes.fromhex("4502")  # a vacuous SYN-form option (§4.6)
    assert synack == LINUX_SYN
    assert fallback_reason(b) is FallbackReason.VACUOUS_OPTION


def test_passive_without_teps_falls_back() -> None:
    b = make(EnoConfig(teps=()), active=False)
    b.collect(b.neg.receive_syn(bytes.fromhex("450323")))
    assert fallback_reason(b) is FallbackReason.VACUOUS_OPTION
    assert b.sent(b.neg.send_synack()) is None


def test_repeated_tep_id_is_invalid_by_default() -> None:
    # §4.5 condition 3: repetition is valid only where the TEP defines it.
    b = make(EnoConfig(teps=(Z,)), active=False)
    b.neg.receive_syn(bytes.fromhex("45042323"))
    assert fallback_reason(b) is FallbackReason.NO_COMMON_TEP
    allow = make(EnoConfig(teps=(Z,), validator=lambda t, mine, peer: True), active=False)
    allow.neg.receive_syn(bytes.fromhex("45042323"))
    assert allow.neg.selected_tep == Z


def test_validator_can_refuse_data() -> None:
    config = EnoConfig(teps=(Z, X), validator=lambda t, mine, peer: peer[-1].data is None)
    b = make(config, active=False)
    b.neg.receive_syn(bytes.fromhex("450421a3") + b"\x01")  # Z offered with data: refused
    assert b.neg.selected_tep == X


@pytest.mark.parametrize(
    ("syn", "reason"),
    [
        (LINUX_SYN, FallbackReason.NO_ENO_IN_SYN),
        (bytes.fromhex("450323" "450323"), FallbackReason.MULTIPLE_ENO),  # §4.1
        (bytes.fromhex("4504" "8123"), FallbackReason.MALFORMED_OPTION),  # §4.4
        (bytes.fromhex("4503" "80"), FallbackReason.MALFORMED_OPTION),
        (bytes.fromhex("4504" "0123"), FallbackReason.SAME_B_BIT),
        (bytes.fromhex("4502"), FallbackReason.VACUOUS_OPTION),
    ],
    ids=["no ENO", "two ENO options", "length byte then v=0", "trailing length byte",
         "peer b=1", "vacuous"],
)
def test_passive_fallback_reasons(syn: bytes, reason: FallbackReason) -> None:
    b = make(EnoConfig(teps=(Z,)), active=False)
    b.collect(b.neg.receive_syn(syn))
    assert b.events == [Fallback(reason, b.events[0].detail)]  # type: ignore[attr-defined]
    assert b.sent(b.neg.send_synack(LINUX_SYN)) is None  # no more ENO after fallback (§4.6)
    assert b.neg.receive_ack(LINUX_ACK) == []


def test_mandatory_application_aware() -> None:
    strict = EnoConfig(teps=(Z,), mandatory_application_aware=True)
    a = make(EnoConfig(teps=(Z,)), active=True)
    b = make(strict, active=False)
    three_way(a, b)
    assert fallback_reason(b) is FallbackReason.APP_AWARE_REQUIRED  # Figure 10, case 3
    assert fallback_reason(a) is FallbackReason.NO_ENO_IN_SYNACK

    a = make(EnoConfig(teps=(Z,), application_aware=True), active=True)
    b = make(strict, active=False)
    syn, synack, _, _ = three_way(a, b)
    assert eno_of(syn) == bytes.fromhex("45040223") and eno_of(synack) == bytes.fromhex("45040323")
    assert negotiated(a).application_aware and negotiated(b).application_aware

    a = make(EnoConfig(teps=(Z,), mandatory_application_aware=True), active=True)
    b = make(EnoConfig(teps=(Z,)), active=False)
    three_way(a, b)
    assert fallback_reason(a) is FallbackReason.APP_AWARE_REQUIRED
    assert fallback_reason(b) is FallbackReason.NO_ENO_IN_ACK
    assert a.neg.peer_global == GlobalSuboption(b=True, a=False)  # §4.2: peer a is readable


def test_a_bit_without_mandatory_mode_is_only_a_signal() -> None:
    a = make(EnoConfig(teps=(Z,), application_aware=True), active=True)
    b = make(EnoConfig(teps=(Z,)), active=False)
    three_way(a, b)
    assert negotiated(a).peer_global.a is False and negotiated(b).peer_global.a is True
    assert not negotiated(a).application_aware


def test_mandatory_encryption_aborts_instead_of_falling_back() -> None:
    a = make(EnoConfig(teps=(Z,), mandatory_encryption=True), active=True)
    b = make(EnoConfig(teps=(Z,)), active=False)
    syn = a.sent(a.neg.send_syn(LINUX_SYN))
    assert syn is not None
    b.neg.receive_syn(remove_eno(wire(LINUX_SYN, syn)))
    events = a.neg.receive_synack(wire(LINUX_SYN, b.sent(b.neg.send_synack(LINUX_SYN))))
    assert events == [
        Aborted(AbortReason.MANDATORY_ENCRYPTION, FallbackReason.NO_ENO_IN_SYNACK, "no ENO option")
    ]
    assert a.neg.state is State.ABORTED
    with pytest.raises(EnoStateError):
        a.neg.send_ack(LINUX_ACK)
    with pytest.raises(LocalProtocolError):
        EnoNegotiator(EnoConfig(enabled=False, mandatory_encryption=True), active=True)


def test_disabled_by_config_and_local_disable() -> None:
    off = make(EnoConfig(teps=(Z,), enabled=False), active=True)
    assert off.sent(off.neg.send_syn(LINUX_SYN)) is None
    assert fallback_reason(off) is FallbackReason.DISABLED_BY_CONFIG

    a = make(EnoConfig(teps=(Z,)), active=True)
    first = a.sent(a.neg.send_syn(LINUX_SYN))
    assert a.sent(a.neg.send_syn(LINUX_SYN)) == first  # retransmission: unchanged (§4.6)
    # §4.6: MAY drop ENO between SYN-only retransmissions; disable() returns the fallback.
    assert a.neg.disable() == [
        Fallback(FallbackReason.LOCAL_DISABLE, "disabled through the API")
    ]
    assert a.neg.disable() == []  # idempotent
    assert a.neg.send_syn(LINUX_SYN) == (None, [])
    assert a.neg.pop_events() == []  # every event was returned by its call


def test_config_refuses_unknown_keys_and_repeated_teps() -> None:
    with pytest.raises(TypeError):
        EnoConfig(tepz=(Z,))  # type: ignore[call-arg]
    with pytest.raises(EnoEncodeError):
        EnoConfig(teps=(Z, TepSuboption(Z, b"\x01")))
