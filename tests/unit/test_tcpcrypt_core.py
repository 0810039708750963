"""TcpcryptCore end to end: vectors, two endpoints over a fake link, handshake errors, state
table (frames, rekeying and urgent data: test_tcpcrypt_frames.py)."""

from __future__ import annotations

import logging

import pytest

from testbed.teps.base import (
    DataReceived,
    EndOfStream,
    HandshakeComplete,
    IntegrityError,
    LocalProtocolError,
    Role,
    TepContext,
    TepCore,
)
from testbed.teps.tcpcrypt.constants import AEADS, TEPS, AeadId, TepId
from testbed.teps.tcpcrypt.core import TcpcryptCore
from testbed.teps.tcpcrypt.errors import (
    BadLengthError,
    BadMagicError,
    BadPublicKeyError,
    CipherError,
    IllegalTransition,
)
from testbed.teps.tcpcrypt.loopback import DeterministicRandom, Pair, ScriptedRandom, connect
from testbed.teps.tcpcrypt.state import TRANSITIONS, State, Trigger, next_state
from testbed.teps.tcpcrypt.wire import Init2, push_init2
from tests.unit.tcpcrypt_support import assert_dead, core, data_of, established

PRIV_A = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
PRIV_B = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
PUB_A = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
PUB_B = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
N_A = bytes(range(0x00, 0x20))
N_B = bytes(range(0x20, 0x40))


# -- byte vectors through the core ---------------------------------------------------------


def test_handshake_vectors_both_directions() -> None:
    a = core(Role.A, rand=ScriptedRandom([N_A, PRIV_A]), ciphers=(AeadId.AES_128_GCM,))
    b = core(Role.B, rand=ScriptedRandom([N_B, PRIV_B]))
    a.start(0.0)
    init1 = a.data_to_send()
    assert init1 == bytes.fromhex("15101a0e0000004b010001") + N_A + PUB_A
    assert a.state is State.WAIT_INIT2 and not a.handshake_complete
    b.start(0.0)
    events = b.receive_data(init1, 0.0)
    init2 = b.data_to_send()
    assert init2 == bytes.fromhex("097105e00000004a0001") + N_B + PUB_B
    assert events == [HandshakeComplete(b.session_id or b"")]
    assert a.receive_data(init2, 0.0) == [HandshakeComplete(b.session_id or b"")]
    sid = a.session_id or b""
    assert len(sid) == 33 and sid[0] == 0x23
    assert a.aead_id == b.aead_id == AeadId.AES_128_GCM


def test_core_satisfies_tep_core_protocol() -> None:
    c: TepCore = core(Role.A)
    assert c.session_id is None and not c.handshake_complete


# -- two endpoints over a fake link -------------------------------------------------------------

MESSAGES = [b"", b"x", b"hello world", bytes(range(256)) * 300, b"tail"]


def exchange(pair: Pair) -> None:
    pair.pump()
    assert isinstance(pair.events_a[0], HandshakeComplete)
    assert isinstance(pair.events_b[0], HandshakeComplete)
    for msg in MESSAGES:
        pair.a.send_data(msg)
        pair.b.send_data(msg[::-1])
        pair.pump()
    pair.a.close()
    pair.pump()
    pair.b.send_data(b"after A closed")  # half-close: B may still send (§3.7)
    pair.b.close()
    pair.pump()
    sent = b"".join(MESSAGES)
    assert data_of(pair.events_b) == sent
    assert data_of(pair.events_a) == b"".join(m[::-1] for m in MESSAGES) + b"after A closed"
    assert pair.events_a[-1] == EndOfStream() and pair.events_b[-1] == EndOfStream()
    assert pair.a.state is pair.b.state is State.CLOSED
    assert pair.a.peer_closed() == [] and pair.b.peer_closed() == []


@pytest.mark.parametrize("aead", sorted(AEADS))
@pytest.mark.parametrize("tep", sorted(TEPS))
def test_every_tep_and_aead_over_fake_link(tep: int, aead: int) -> None:
    pair = connect(tep, transcript=b"\x45\x03\x23\x45\x03\x23", link_seed=tep * 7 + aead,
                   options_a={"tcpcrypt.ciphers": (aead,)})
    exchange(pair)
    assert pair.a.session_id == pair.b.session_id
    assert pair.a.aead_id == aead


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_piece", [1, 3, 64, 5000])
def test_fake_link_split_coalesce_delay(seed: int, max_piece: int) -> None:
    pair = connect(TepId.X25519, link_seed=seed, max_piece=max_piece,
                   options_a={"tcpcrypt.chunk_size": 100})
    exchange(pair)


def test_transcript_mismatch_gives_different_keys() -> None:
    # ENO transcript is bound into PRK (RFC 8547 §4.8, RFC 8548 §3.3): altered SYNs fail.
    a = TcpcryptCore(TepContext(Role.A, b"one", DeterministicRandom("a")), TepId.X25519)
    b = TcpcryptCore(TepContext(Role.B, b"two", DeterministicRandom("b")), TepId.X25519)
    a.start(0.0)
    b.start(0.0)
    b.receive_data(a.data_to_send(), 0.0)
    a.receive_data(b.data_to_send(), 0.0)
    assert a.session_id != b.session_id
    a.send_data(b"secret")
    with pytest.raises(IntegrityError):
        b.receive_data(a.data_to_send(), 0.0)
    assert_dead(b)


# -- cipher negotiation (§3.3) ---------------------------------------------------------------


def test_b_picks_by_its_own_preference() -> None:
    a = core(Role.A, ciphers=(AeadId.CHACHA20_POLY1305, AeadId.AES_128_GCM))
    b = core(Role.B, ciphers=(AeadId.AES_256_GCM, AeadId.AES_128_GCM, AeadId.CHACHA20_POLY1305))
    a.start(0.0)
    b.start(0.0)
    b.receive_data(a.data_to_send(), 0.0)
    a.receive_data(b.data_to_send(), 0.0)
    assert a.aead_id == b.aead_id == AeadId.AES_128_GCM


def test_no_common_cipher() -> None:
    a = core(Role.A, ciphers=(AeadId.CHACHA20_POLY1305,))
    b = core(Role.B, ciphers=(AeadId.AES_128_GCM,))
    a.start(0.0)
    b.start(0.0)
    with pytest.raises(CipherError):
        b.receive_data(a.data_to_send(), 0.0)
    assert_dead(b)


def test_init2_with_cipher_not_offered_aborts_a() -> None:
    a = core(Role.A, ciphers=(AeadId.AES_128_GCM,))
    a.start(0.0)
    a.data_to_send()
    with pytest.raises(CipherError):
        a.receive_data(push_init2(Init2(AeadId.AES_256_GCM, N_B, PUB_B)), 0.0)
    assert_dead(a)


# -- handshake errors --------------------------------------------------------------------------


def test_bad_magic_detected_on_first_byte() -> None:
    b = core(Role.B)
    b.start(0.0)
    with pytest.raises(BadMagicError):
        b.receive_data(b"G", 0.0)  # "GET /" from a peer that is not speaking tcpcrypt
    assert_dead(b)


def test_bad_length_in_init1() -> None:
    b = core(Role.B)
    b.start(0.0)
    with pytest.raises(BadLengthError):
        b.receive_data(bytes.fromhex("15101a0e00000010"), 0.0)
    assert_dead(b)


@pytest.mark.parametrize("pub", [bytes(32), b"\x01" + bytes(31)])
def test_bad_x25519_key_in_init1(pub: bytes) -> None:
    b = core(Role.B)
    b.start(0.0)
    with pytest.raises(BadPublicKeyError):
        b.receive_data(bytes.fromhex("15101a0e0000004b010001") + N_A + pub, 0.0)
    assert_dead(b)


def test_bad_p256_key_in_init2() -> None:
    a = core(Role.A, TepId.P256)
    a.start(0.0)
    a.data_to_send()
    bad = b"\x00\x23\x03" + b"\xff" * 32
    with pytest.raises(BadPublicKeyError):
        a.receive_data(push_init2(Init2(AeadId.AES_128_GCM, N_B, bad)), 0.0)
    assert_dead(a)


def test_init_split_byte_by_byte_then_frames_in_same_piece() -> None:
    a, b = core(Role.A), core(Role.B)
    a.start(0.0)
    b.start(0.0)
    init1 = a.data_to_send()
    for i in range(len(init1) - 1):
        assert b.receive_data(init1[i : i + 1], 0.0) == []
    assert isinstance(b.receive_data(init1[-1:], 0.0)[0], HandshakeComplete)
    b.send_data(b"early from B")  # B may send right after Init2 (§3.3)
    events = a.receive_data(b.data_to_send(), 0.0)  # Init2 and a frame in one piece
    assert isinstance(events[0], HandshakeComplete) and data_of(events) == b"early from B"


# -- local misuse ---------------------------------------------------------------------------


def test_receive_before_start() -> None:
    c = core(Role.B)
    with pytest.raises(LocalProtocolError):
        c.receive_data(b"x", 0.0)
    assert_dead(c)


def test_send_before_keys() -> None:
    a = core(Role.A)
    a.start(0.0)
    with pytest.raises(LocalProtocolError):
        a.send_data(b"too early")  # A may send only once Init2 arrived (§3.3)
    assert_dead(a)


@pytest.mark.parametrize("call", ["start", "close"])
def test_twice_is_an_illegal_transition(call: str) -> None:
    a, _ = established()
    if call == "close":
        a.close()
    with pytest.raises(IllegalTransition):
        getattr(a, call)(*([0.0] if call == "start" else []))
    assert_dead(a)


def test_send_after_close() -> None:
    a, _ = established()
    a.close()
    with pytest.raises(LocalProtocolError):
        a.send_data(b"x")


def test_bad_urgent_index() -> None:
    a, _ = established()
    with pytest.raises(LocalProtocolError):
        a.send_data(b"abc", urgent=3)


def test_unknown_option_refused() -> None:
    with pytest.raises(ValueError):
        core(Role.A, nonsense=1)
    with pytest.raises(ValueError):
        core(Role.A, ciphers=(0x0003,))


# -- the state machine -------------------------------------------------------------------------


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("trigger", list(Trigger))
def test_transition_table_walk(state: State, trigger: Trigger) -> None:
    if (state, trigger) in TRANSITIONS:
        assert next_state(state, trigger) is TRANSITIONS[(state, trigger)]
    else:
        with pytest.raises(IllegalTransition):
            next_state(state, trigger)


def test_error_is_terminal_and_reachable_from_everywhere_else() -> None:
    for state in State:
        if state is State.ERROR:
            assert not any(s is State.ERROR for s, _ in TRANSITIONS)
        else:
            assert TRANSITIONS[(state, Trigger.FAIL)] is State.ERROR


def test_transitions_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="testbed.teps.tcpcrypt.core"):
        established()
    text = caplog.text
    assert "idle -> wait-init2" in text and "wait-init2 -> established" in text
    assert "idle -> wait-init1" in text and "wait-init1 -> established" in text


def test_first_data_is_sealed_with_the_keys_and_leaves_with_no_further_call() -> None:
    # Role A's first_data becomes a frame inside the receive_data that handles Init2 (§3.3:
    # A has its keys then); nothing is queued before, and send_data still follows it.
    a, b = core(Role.A, first_data=b"GET /"), core(Role.B)
    a.start(0.0)
    init1 = a.data_to_send()
    b.start(0.0)
    b.receive_data(init1, 0.0)
    init2 = b.data_to_send()
    assert a.data_to_send() == b""
    events = a.receive_data(init2, 0.0)
    assert any(isinstance(e, HandshakeComplete) for e in events)
    frame = a.data_to_send()
    assert frame
    got = b.receive_data(frame, 0.0)
    assert [e.data for e in got if isinstance(e, DataReceived)] == [b"GET /"]
    a.send_data(b" more")
    got = b.receive_data(a.data_to_send(), 0.0)
    assert [e.data for e in got if isinstance(e, DataReceived)] == [b" more"]


def test_first_data_is_for_role_a_and_must_be_bytes() -> None:
    with pytest.raises(ValueError, match="role A"):
        core(Role.B, first_data=b"x")
    with pytest.raises(ValueError, match="first_data must be bytes"):
        core(Role.A, first_data="x")
