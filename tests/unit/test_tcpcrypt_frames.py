"""TcpcryptCore after the handshake: frame errors (tag, replay, reorder, truncation, bare
FIN), rekeying and urgent data."""

from __future__ import annotations

import pytest

from testbed.teps.base import (
    EndOfStream,
    IntegrityError,
    KeyUpdated,
    RemoteProtocolError,
    Role,
    TruncationError,
)
from testbed.teps.tcpcrypt.constants import TepId
from testbed.teps.tcpcrypt.core import TcpcryptCore, UrgentData
from testbed.teps.tcpcrypt.loopback import connect
from tests.unit.tcpcrypt_support import assert_dead, core, data_of, established

# -- frame errors: tag, replay, reorder, truncation, bare FIN ---------------------------------


def two_frames() -> tuple[TcpcryptCore, TcpcryptCore, bytes, bytes]:
    a, b = established()
    a.send_data(b"first")
    f1 = a.data_to_send()
    a.send_data(b"second")
    return a, b, f1, a.data_to_send()


def test_tag_failure() -> None:
    _, b, f1, _ = two_frames()
    bad = bytearray(f1)
    bad[5] ^= 0x80
    with pytest.raises(IntegrityError):
        b.receive_data(bytes(bad), 0.0)
    assert_dead(b)


def test_tampered_header_fails_tag() -> None:
    _, b, f1, _ = two_frames()
    with pytest.raises(IntegrityError):
        b.receive_data(bytes([f1[0] | 0x40]) + f1[1:], 0.0)  # a cres bit set on the path


def test_replayed_frame() -> None:
    _, b, f1, _ = two_frames()
    assert data_of(b.receive_data(f1, 0.0)) == b"first"
    with pytest.raises(IntegrityError):
        b.receive_data(f1, 0.0)  # same bytes at a later offset: a different nonce (§3.6)
    assert_dead(b)


def test_reordered_frames() -> None:
    _, b, f1, f2 = two_frames()
    with pytest.raises(IntegrityError):
        b.receive_data(f2 + f1, 0.0)
    assert_dead(b)


def test_dropped_frame() -> None:
    _, b, _, f2 = two_frames()
    with pytest.raises(IntegrityError):
        b.receive_data(f2, 0.0)


def test_truncated_frame_then_fin() -> None:
    _, b, f1, f2 = two_frames()
    assert data_of(b.receive_data(f1 + f2[:-3], 0.0)) == b"first"
    with pytest.raises(TruncationError):
        b.peer_closed()
    assert_dead(b)


def test_bare_fin_without_finp() -> None:
    _, b, f1, f2 = two_frames()
    assert data_of(b.receive_data(f1 + f2, 0.0)) == b"firstsecond"
    with pytest.raises(TruncationError):
        b.peer_closed()  # TCP FIN, but no FINp frame (§3.7)
    assert_dead(b)


@pytest.mark.parametrize("role", [Role.A, Role.B])
def test_fin_during_handshake(role: Role) -> None:
    c = core(role)
    c.start(0.0)
    with pytest.raises(TruncationError):
        c.peer_closed()


def test_truncation_is_not_eof() -> None:
    a, b = established()
    a.close()
    events = b.receive_data(a.data_to_send(), 0.0)
    assert events == [EndOfStream()]
    assert b.peer_closed() == []  # the FIN after FINp is the clean end


def test_bytes_after_finp() -> None:
    a, b = established()
    a.close()
    fin = a.data_to_send()
    with pytest.raises(RemoteProtocolError):
        b.receive_data(fin + b"\x00", 0.0)
    assert_dead(b)


def test_valid_frames_before_a_bad_one_are_not_returned_unauthenticated() -> None:
    _, b, f1, f2 = two_frames()
    bad = bytearray(f2)
    bad[-1] ^= 1
    with pytest.raises(IntegrityError):
        b.receive_data(f1 + bytes(bad), 0.0)


# -- rekeying (§3.8) and urgent data (§3.7) -------------------------------------------------------


def test_rekey_both_directions() -> None:
    pair = connect(TepId.X25519, link_seed=3)
    pair.pump()
    assert pair.a.rekey() == [KeyUpdated("send")]
    assert pair.a.rekey() == []  # §3.8: no second empty-frame rekey in flight
    pair.pump()
    assert pair.events_b[-2:] == [KeyUpdated("receive"), KeyUpdated("send")]
    assert pair.events_a[-1] == KeyUpdated("receive")
    assert pair.a.generations == pair.b.generations == (1, 1)
    assert pair.b.rekey() == [KeyUpdated("send")]
    pair.b.send_data(b"under generation 2")
    pair.a.send_data(b"also")
    pair.pump()
    assert pair.a.generations == pair.b.generations == (2, 2)
    assert data_of(pair.events_a).endswith(b"under generation 2")
    assert data_of(pair.events_b).endswith(b"also")


def test_rekey_answer_carries_rekey_bit_once() -> None:
    a, b = established()
    a.rekey()
    b.receive_data(a.data_to_send(), 0.0)
    reply = b.data_to_send()
    assert reply[0] == 0x01  # B's mandatory answer opens its generation 1
    b.send_data(b"more")
    assert b.data_to_send()[0] == 0x00
    events = a.receive_data(reply, 0.0)
    assert events == [KeyUpdated("receive")] and a.data_to_send() == b""


def test_rekey_after_own_fin_is_not_answered() -> None:
    a, b = established()
    b.close()
    a.receive_data(b.data_to_send(), 0.0)
    a.rekey()
    events = b.receive_data(a.data_to_send(), 0.0)
    assert events == [KeyUpdated("receive"), KeyUpdated("send")]
    assert b.data_to_send() == b""  # no frame after our FINp (§3.8)


def test_forged_rekey_bit_fails_tag() -> None:
    a, b = established()
    a.send_data(b"x")
    frame = a.data_to_send()
    with pytest.raises(IntegrityError):
        b.receive_data(bytes([frame[0] | 1]) + frame[1:], 0.0)


def test_urgent_data() -> None:
    a, b = established()
    a.send_data(b"0123")
    a.send_data(b"abcdefgh", urgent=5)
    events = b.receive_data(a.data_to_send(), 0.0)
    assert UrgentData(4 + 5) in events
    assert data_of(events) == b"0123abcdefgh"


def test_urgent_in_a_later_chunk() -> None:
    a, b = established(chunk_size=4)
    a.send_data(b"abcdefghij", urgent=9)
    events = b.receive_data(a.data_to_send(), 0.0)
    assert [e for e in events if isinstance(e, UrgentData)] == [UrgentData(9)]
