"""Data in SYN segments and TCP Fast Open beside ENO (RFC 8547 §4.7).

The sender side: no SYN data unless the SYN TEP defines it and SYN-only data was enabled,
no TFO cookie beside ENO, and the two aborts. The receiver side: the four cases in which
data of a SYN+ENO segment MUST be discarded, even with ENO off by configuration.
"""

from __future__ import annotations

import pytest

from testbed.eno.config import EnoConfig
from testbed.eno.events import (
    Aborted,
    AbortReason,
    DiscardReason,
    Fallback,
    FallbackReason,
    SynDataAccepted,
    SynDataDiscarded,
)
from testbed.eno.negotiation import EnoNegotiator, State
from testbed.eno.tcp_options import append_eno

LINUX_SYN = bytes.fromhex("020405b4" "0402" "080a0000000100000000" "01" "030307")
LINUX_ACK = bytes.fromhex("0101" "080a0000000200000001")
TFO_COOKIE = bytes.fromhex("220a0102030405060708")  # RFC 7413 §4.1.1, 8-byte cookie
X, Z = 0x21, 0x23


def make(config: EnoConfig, active: bool) -> EnoNegotiator:
    return EnoNegotiator(config, active=active)


def wire(base: bytes, eno: bytes | None) -> bytes:
    return append_eno(base, eno) if eno is not None else base


def fallback_reason(neg: EnoNegotiator) -> FallbackReason:
    assert isinstance(neg.outcome, Fallback), neg.outcome
    return neg.outcome.reason


EXP = 0x20  # a TEP the test pretends defines SYN data
SYN_DATA = EnoConfig(teps=(EXP,), syn_data_teps=frozenset({EXP}), allow_syn_only_data=True)


def test_syn_data_refused_by_default() -> None:
    a = make(EnoConfig(teps=(Z,)), active=True)
    assert a.send_syn(LINUX_SYN, payload_len=10).option is None
    assert fallback_reason(a) is FallbackReason.SYN_DATA_CONFLICT
    only = EnoConfig(teps=(EXP,), syn_data_teps=frozenset({EXP}))  # SYN-only data off (§4.7)
    a = make(only, active=True)
    assert a.send_syn(LINUX_SYN, payload_len=10).option is None
    assert fallback_reason(a) is FallbackReason.SYN_DATA_CONFLICT


def test_tfo_cookie_conflicts_but_cookie_request_does_not() -> None:
    a = make(EnoConfig(teps=(Z,)), active=True)
    assert a.send_syn(TFO_COOKIE).option is None
    assert fallback_reason(a) is FallbackReason.TFO_CONFLICT
    a = make(EnoConfig(teps=(Z,)), active=True)
    assert a.send_syn(bytes.fromhex("2202")).option == bytes.fromhex("450323")


def test_syn_data_accepted_when_the_tep_defines_it() -> None:
    a = make(SYN_DATA, active=True)
    b = make(SYN_DATA, active=False)
    syn = wire(LINUX_SYN, a.send_syn(LINUX_SYN, payload_len=10).option)
    assert b.receive_syn(syn, payload_len=10) == [SynDataAccepted(EXP)]
    events = a.receive_synack(wire(b"", b.send_synack().option), syn_data_acked=True)
    assert events == []
    assert a.send_ack().option == bytes.fromhex("4502")


@pytest.mark.parametrize(
    ("b_config", "options", "reason"),
    [
        (EnoConfig(teps=(EXP,)), b"", DiscardReason.NO_SYN_DATA_DEFINED),
        (EnoConfig(teps=(X, EXP), syn_data_teps=frozenset({EXP})), b"",
         DiscardReason.NOT_NEGOTIATED_TEP),
        (SYN_DATA, TFO_COOKIE, DiscardReason.CONFLICTING_OPTION),
        (EnoConfig(teps=(Z,)), b"", DiscardReason.ENO_FAILED),
        (EnoConfig(teps=(EXP,), enabled=False), b"", DiscardReason.ENO_FAILED),  # §4.7: still
    ],
    ids=["TEP defines no SYN data", "SYN TEP lost", "TFO cookie", "ENO failed", "ENO off"],
)
def test_syn_data_discarded(b_config: EnoConfig, options: bytes, reason: DiscardReason) -> None:
    syn = options + bytes.fromhex("45042120")  # offers X and EXP; SYN TEP = EXP
    b = make(b_config, active=False)
    events = b.receive_syn(syn, payload_len=10)
    assert [e for e in events if isinstance(e, SynDataDiscarded)] == [SynDataDiscarded(reason)]


def test_plain_syn_data_is_not_enos_business() -> None:
    b = make(EnoConfig(teps=(Z,)), active=False)
    events = b.receive_syn(TFO_COOKIE, payload_len=10)
    assert not any(isinstance(e, SynDataAccepted | SynDataDiscarded) for e in events)


def test_acked_syn_data_with_lost_syn_tep_aborts() -> None:
    a = make(EnoConfig(teps=(EXP, X), syn_data_teps=frozenset({EXP}), allow_syn_only_data=True),
             active=True)
    assert a.send_syn(payload_len=10).option == bytes.fromhex("45042120")
    events = a.receive_synack(bytes.fromhex("45040121"), syn_data_acked=True)
    assert len(events) == 1 and isinstance(events[0], Aborted)
    assert events[0].reason is AbortReason.SYN_DATA_MISINTERPRETED
    assert a.state is State.ABORTED


def test_unacked_syn_data_with_lost_syn_tep_is_fine() -> None:
    a = make(EnoConfig(teps=(EXP, X), syn_data_teps=frozenset({EXP}), allow_syn_only_data=True),
             active=True)
    a.send_syn(payload_len=10)
    assert a.receive_synack(bytes.fromhex("45040121")) == []
    assert a.selected_tep == X


def test_synack_without_eno_after_syn_data_aborts() -> None:
    a = make(SYN_DATA, active=True)
    a.send_syn(payload_len=10)
    (event,) = a.receive_synack(LINUX_SYN)
    assert event == Aborted(
        AbortReason.SYN_DATA_UNCONFIRMED,
        FallbackReason.NO_ENO_IN_SYNACK,
        "SYN-ACK without ENO after SYN-only data (§4.7)",
    )
    tolerant = EnoConfig(teps=(EXP,), syn_data_teps=frozenset({EXP}), allow_syn_only_data=True,
                         tolerate_unacked_syn_data=True)
    a = make(tolerant, active=True)
    a.send_syn(payload_len=10)
    a.receive_synack(LINUX_SYN)
    assert fallback_reason(a) is FallbackReason.NO_ENO_IN_SYNACK
    a = make(tolerant, active=True)  # the mode does not cover data that WAS acknowledged
    a.send_syn(payload_len=10)
    (event,) = a.receive_synack(LINUX_SYN, syn_data_acked=True)
    assert isinstance(event, Aborted) and event.reason is AbortReason.SYN_DATA_MISINTERPRETED


def test_synack_data_acked_after_fallback_aborts() -> None:
    config = EnoConfig(teps=(EXP,), syn_data_teps=frozenset({EXP}))
    b = make(config, active=False)
    b.receive_syn(bytes.fromhex("450320"))
    assert b.send_synack(payload_len=5).option == bytes.fromhex("45040120")
    (event,) = b.receive_ack(LINUX_ACK, syn_data_acked=True)  # ENO stripped from the ACK
    assert isinstance(event, Aborted) and event.fallback is FallbackReason.NO_ENO_IN_ACK


@pytest.mark.parametrize(
    ("synack", "fallback"),
    [
        (bytes.fromhex("4504" "8120"), FallbackReason.MALFORMED_OPTION),  # ignored (§4.4)
        (bytes.fromhex("450301" "450301"), FallbackReason.MULTIPLE_ENO),  # as if none (§4.1)
    ],
    ids=["ill-formed ENO", "two ENO options"],
)
def test_unusable_eno_in_synack_counts_as_none(synack: bytes, fallback: FallbackReason) -> None:
    a = make(SYN_DATA, active=True)
    a.send_syn(payload_len=10)
    (event,) = a.receive_synack(synack)
    assert isinstance(event, Aborted)
    assert (event.reason, event.fallback) == (AbortReason.SYN_DATA_UNCONFIRMED, fallback)


def test_synack_data_needs_a_tep_that_defines_it() -> None:
    b = make(EnoConfig(teps=(Z,)), active=False)
    b.receive_syn(bytes.fromhex("450323"))
    assert b.send_synack(payload_len=5).option is None
    assert fallback_reason(b) is FallbackReason.SYN_DATA_CONFLICT
