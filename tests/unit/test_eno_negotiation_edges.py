"""ENO negotiation at the handshake's edges, two endpoints in memory: retransmitted SYNs and
SYN-ACKs, option space running out, and simultaneous open (RFC 8547 §4.6, Figure 12).
"""

from __future__ import annotations

import pytest

from testbed.eno.config import EnoConfig
from testbed.eno.errors import LocalProtocolError
from testbed.eno.events import Fallback, FallbackReason, Negotiated
from testbed.eno.negotiation import State
from testbed.eno.option import TepSuboption
from testbed.teps.base import Role
from tests.unit.eno_negotiation_support import (
    LINUX_ACK,
    LINUX_SYN,
    Box,
    End,
    X,
    Y,
    Z,
    eno_of,
    fallback_reason,
    make,
    negotiated,
    passthrough,
    three_way,
    wire,
)

FULL = LINUX_SYN + bytes.fromhex("050a0000000100000002") + bytes.fromhex("01" * 10)  # 40 bytes


def simultaneous(a: End, b: End, box: Box = passthrough) -> list[bytes]:
    """Two active openers (RFC 8547 §3, Figure 12): both SYNs cross, then both SYN-ACKs."""
    syn_a = box("syn_a", wire(LINUX_SYN, a.sent(a.neg.send_syn(LINUX_SYN))))
    syn_b = box("syn_b", wire(LINUX_SYN, b.sent(b.neg.send_syn(LINUX_SYN))))
    a.collect(a.neg.receive_syn(syn_b))
    b.collect(b.neg.receive_syn(syn_a))
    synack_a = box("synack_a", wire(LINUX_SYN, a.sent(a.neg.send_synack(LINUX_SYN))))
    synack_b = box("synack_b", wire(LINUX_SYN, b.sent(b.neg.send_synack(LINUX_SYN))))
    a.collect(a.neg.receive_synack(synack_b))
    b.collect(b.neg.receive_synack(synack_a))
    a.drain()
    b.drain()
    return [syn_a, syn_b, synack_a, synack_b]


# ---------------------------------------------------------------------------
# Retransmissions and option space
# ---------------------------------------------------------------------------


def test_retransmitted_syn_must_repeat_the_option() -> None:
    b = make(EnoConfig(teps=(Z,)), active=False)
    b.neg.receive_syn(bytes.fromhex("45042123"))
    b.neg.receive_syn(bytes.fromhex("45042123"))
    assert b.neg.state is State.SYN_RECEIVED
    assert b.sent(b.neg.send_synack()) == b.sent(b.neg.send_synack()) == bytes.fromhex("45040123")
    b.neg.receive_syn(bytes.fromhex("45042123"))
    assert b.neg.state is State.SYNACK_SENT
    b.neg.receive_syn(bytes.fromhex("45032123"[:6]))
    assert fallback_reason(b) is FallbackReason.SYN_OPTION_CHANGED


def test_syn_retries_with_eno_drops_the_option_after_the_limit() -> None:
    """§4.6 exception: with syn_retries_with_eno = 2 the original SYN and two retransmissions
    carry the same option byte for byte; the third retransmission goes without and the
    connection falls back, and the passive end sees that retransmission as an ENO-less SYN."""
    a = make(EnoConfig(teps=(Z,), syn_retries_with_eno=2), active=True)
    sent = [a.neg.send_syn(LINUX_SYN) for _ in range(3)]
    assert sent == [(bytes.fromhex("450323"), [])] * 3 and a.neg.state is State.SYN_SENT
    option, (event,) = a.neg.send_syn(LINUX_SYN)  # the fallback comes with the segment
    assert option is None and a.neg.state is State.DISABLED
    assert event == Fallback(FallbackReason.SYN_RETRANSMISSION,
                             "no answer to 3 SYN(s) with ENO; retransmitting without")
    assert a.neg.send_syn(LINUX_SYN) == (None, [])  # stays off
    assert a.neg.pop_events() == []
    # The path delivered a late SYN-ACK with ENO: encryption stays off, nothing is owed.
    a.neg.receive_synack(bytes.fromhex("45040123"))
    assert a.neg.state is State.DISABLED and a.sent(a.neg.send_ack(LINUX_ACK)) is None


def test_syn_retries_zero_drops_from_the_first_retransmission() -> None:
    a = make(EnoConfig(teps=(Z,), syn_retries_with_eno=0), active=True)
    assert a.sent(a.neg.send_syn(LINUX_SYN)) == bytes.fromhex("450323")
    assert a.sent(a.neg.send_syn(LINUX_SYN)) is None
    assert fallback_reason(a) is FallbackReason.SYN_RETRANSMISSION


def test_syn_retries_default_keeps_the_option_forever() -> None:
    a = make(EnoConfig(teps=(Z,)), active=True)
    assert {a.sent(a.neg.send_syn(LINUX_SYN)) for _ in range(8)} == {bytes.fromhex("450323")}
    assert a.neg.state is State.SYN_SENT


def test_syn_retries_never_drop_a_syn_that_carried_data() -> None:
    """Data sent under the SYN TEP would be read as plain SYN data without the option."""
    config = EnoConfig(teps=(Z,), syn_data_teps=frozenset({Z}), allow_syn_only_data=True,
                       syn_retries_with_eno=0)
    a = make(config, active=True)
    first = a.sent(a.neg.send_syn(LINUX_SYN, payload_len=10))
    assert first is not None and a.sent(a.neg.send_syn(LINUX_SYN, payload_len=10)) == first
    assert a.neg.state is State.SYN_SENT


def test_syn_retries_config_is_checked() -> None:
    with pytest.raises(LocalProtocolError):
        EnoConfig(teps=(Z,), syn_retries_with_eno=-1)
    with pytest.raises(LocalProtocolError):
        EnoConfig(teps=(Z,), syn_retries_with_eno=1, mandatory_encryption=True)


def test_retransmitted_syn_without_eno() -> None:
    b = make(EnoConfig(teps=(Z,)), active=False)
    b.neg.receive_syn(bytes.fromhex("450323"))
    b.neg.send_synack()
    b.neg.receive_syn(LINUX_SYN)  # the active opener dropped ENO (§4.6 exception 1)
    assert fallback_reason(b) is FallbackReason.NO_ENO_IN_SYN


def test_retransmitted_synack_is_ignored_after_the_first() -> None:
    a = make(EnoConfig(teps=(Z,)), active=True)
    a.neg.send_syn()
    a.neg.receive_synack(bytes.fromhex("45040123"))
    a.neg.receive_synack(LINUX_SYN)  # after the first received ACK segment: not checked
    assert a.sent(a.neg.send_ack()) == bytes.fromhex("4502")
    a.neg.receive_synack(bytes.fromhex("45040123"))
    assert isinstance(a.neg.outcome, Negotiated)


def test_full_options_on_the_syn() -> None:
    a = make(EnoConfig(teps=(Z,)), active=True)
    b = make(EnoConfig(teps=(Z,)), active=False)
    assert a.sent(a.neg.send_syn(FULL)) is None  # 40 bytes used: no room for ENO
    assert fallback_reason(a) is FallbackReason.NO_OPTION_SPACE
    b.neg.receive_syn(FULL)
    assert fallback_reason(b) is FallbackReason.NO_ENO_IN_SYN


def test_big_offer_does_not_fit_beside_linux_options() -> None:
    a = make(EnoConfig(teps=(TepSuboption(Z, bytes(19)),)), active=True)  # 22-byte option
    assert a.sent(a.neg.send_syn(LINUX_SYN)) is None
    assert fallback_reason(a) is FallbackReason.NO_OPTION_SPACE
    fits = make(EnoConfig(teps=(TepSuboption(Z, bytes(17)),)), active=True)  # exactly 20
    assert fits.sent(fits.neg.send_syn(LINUX_SYN)) is not None


def test_full_options_on_the_synack_and_first_ack() -> None:
    b = make(EnoConfig(teps=(Z,)), active=False)
    b.neg.receive_syn(bytes.fromhex("450323"))
    assert b.sent(b.neg.send_synack(FULL)) is None
    assert fallback_reason(b) is FallbackReason.NO_OPTION_SPACE

    a = make(EnoConfig(teps=(Z,)), active=True)
    b = make(EnoConfig(teps=(Z,)), active=False)
    three_way(a, b, ack_base=FULL)
    assert fallback_reason(a) is FallbackReason.NO_OPTION_SPACE
    assert fallback_reason(b) is FallbackReason.NO_ENO_IN_ACK


def test_no_room_on_a_later_echo_segment() -> None:
    a = make(EnoConfig(teps=(Z,)), active=True)
    a.neg.send_syn()
    a.neg.receive_synack(bytes.fromhex("45040123"))
    assert a.sent(a.neg.send_ack(LINUX_ACK)) is not None
    # Encryption stays on; only the first ACK is checked.
    assert a.sent(a.neg.send_ack(FULL)) is None
    assert a.neg.state is State.ENABLED_ECHO


# ---------------------------------------------------------------------------
# Simultaneous open (RFC 8547 §4.2, §4.3, §4.6, Figure 12)
# ---------------------------------------------------------------------------


def test_simultaneous_open_figure_12() -> None:
    a = make(EnoConfig(teps=(X, Y)), active=True)  # wire <Y,X>
    b = make(EnoConfig(teps=(Z, Y, X), passive_role=True), active=True)  # wire <b=1,X,Y,Z>
    syn_a, syn_b, synack_a, synack_b = simultaneous(a, b)
    assert eno_of(syn_a) == bytes.fromhex("45042221")
    assert eno_of(syn_b) == bytes.fromhex("450601212223")
    assert (synack_a, synack_b) == (syn_a, syn_b)  # SYN-ACK repeats the SYN option (§4.6)
    na, nb = negotiated(a), negotiated(b)
    assert na.tep_id == nb.tep_id == Y  # Z is not A's, so Y is B's last valid TEP
    assert (na.role, nb.role) == (Role.A, Role.B)
    assert na.transcript == nb.transcript == eno_of(syn_a) + eno_of(syn_b)
    assert a.neg.state is b.neg.state is State.ENABLED_ECHO
    echo_a, echo_b = a.sent(a.neg.send_ack(LINUX_ACK)), b.sent(b.neg.send_ack(LINUX_ACK))
    assert echo_a == echo_b == bytes.fromhex("4502")
    a.neg.receive_ack(LINUX_ACK + bytes.fromhex("4502"))
    assert a.neg.state is State.ENABLED


@pytest.mark.parametrize("b_bits", [(False, False), (True, True)], ids=["both b=0", "both b=1"])
def test_simultaneous_open_without_exactly_one_b(b_bits: tuple[bool, bool]) -> None:
    a = make(EnoConfig(teps=(Z,), passive_role=b_bits[0]), active=True)
    b = make(EnoConfig(teps=(Z,), passive_role=b_bits[1]), active=True)
    _, _, synack_a, synack_b = simultaneous(a, b)
    assert fallback_reason(a) is fallback_reason(b) is FallbackReason.SAME_B_BIT
    assert (synack_a, synack_b) == (LINUX_SYN, LINUX_SYN)  # §4.6: MAY omit ENO after failing


def test_simultaneous_open_peer_synack_lost() -> None:
    a = make(EnoConfig(teps=(Z,)), active=True)
    b = make(EnoConfig(teps=(Z,), passive_role=True), active=True)
    syn_a, syn_b = wire(b"", a.sent(a.neg.send_syn())), wire(b"", b.sent(b.neg.send_syn()))
    a.neg.receive_syn(syn_b)
    b.neg.receive_syn(syn_a)
    a.neg.send_synack()
    b_synack = b.sent(b.neg.send_synack())
    assert b_synack is not None
    b.collect(b.neg.receive_synack(wire(b"", a.sent(a.neg.send_synack()))))
    b_ack = b.sent(b.neg.send_ack())  # B is established and ACKs with ENO; its SYN-ACK was lost
    a.collect(a.neg.receive_ack(wire(b"", b_ack)))
    assert a.neg.state is State.ENABLED
    assert negotiated(a).transcript == negotiated(b).transcript


def test_simultaneous_open_synack_must_repeat_syn() -> None:
    a = make(EnoConfig(teps=(Z, X)), active=True)
    a.neg.send_syn()
    a.neg.receive_syn(bytes.fromhex("45040123"))
    a.neg.send_synack()
    a.neg.receive_synack(bytes.fromhex("45040121"))
    assert fallback_reason(a) is FallbackReason.SYN_OPTION_CHANGED
    a2 = make(EnoConfig(teps=(Z,)), active=True)
    a2.neg.send_syn()
    a2.neg.receive_syn(bytes.fromhex("45040123"))
    a2.neg.send_synack()
    a2.neg.receive_synack(LINUX_SYN)
    assert fallback_reason(a2) is FallbackReason.NO_ENO_IN_SYNACK
