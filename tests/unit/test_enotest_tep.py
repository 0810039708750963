"""The test-only TEP 0x20 (testbed/teps/enotest.py): byte-level, pair and fuzz tests."""

from __future__ import annotations

import random

import pytest

from testbed.stream import StreamConfig
from testbed.teps import base, enotest
from testbed.teps.base import (
    DataReceived,
    EndOfStream,
    HandshakeComplete,
    IntegrityError,
    RemoteProtocolError,
    Role,
    TepContext,
    TepError,
    TepStateError,
    TruncationError,
)

TRANSCRIPT = bytes.fromhex("4503204504" "0120")


def counter_random(seed: int):
    rng = random.Random(seed)
    return lambda n: bytes(rng.randrange(256) for _ in range(n))


def pair(transcript_b: bytes = TRANSCRIPT):
    a = enotest.EnoTestCore(TepContext(Role.A, TRANSCRIPT, random=counter_random(1)))
    b = enotest.EnoTestCore(TepContext(Role.B, transcript_b, random=counter_random(2)))
    a.start(0.0)
    b.start(0.0)
    return a, b


def shuttle(a, b):
    """Run the handshake to completion; returns all events per side."""
    events_a, events_b = [], []
    for _ in range(4):
        events_b += b.receive_data(a.data_to_send(), 0.0)
        events_a += a.receive_data(b.data_to_send(), 0.0)
    return events_a, events_b


def test_handshake_gives_both_ends_the_same_33_byte_session_id():
    a, b = pair()
    events_a, events_b = shuttle(a, b)
    assert a.handshake_complete and b.handshake_complete
    assert a.session_id == b.session_id and len(a.session_id) == 33
    assert a.session_id[0] == 0x20, "RFC 8547 §5.1: byte 0 is the TEP id"
    assert [type(e) for e in events_a] == [HandshakeComplete]
    assert [type(e) for e in events_b] == [HandshakeComplete]


def test_wire_layout_of_hello():
    a, _ = pair()
    hello = a.data_to_send()
    assert hello[:8] == b"ENOTEST1" and len(hello) == enotest.HELLO_LEN


def test_altered_transcript_fails_the_handshake():
    a, b = pair(transcript_b=bytes.fromhex("4503214504" "0121"))
    b.receive_data(a.data_to_send(), 0.0)
    with pytest.raises(IntegrityError):
        a.receive_data(b.data_to_send(), 0.0)
    with pytest.raises(TepStateError):
        a.send_data(b"x")


def test_data_end_of_stream_and_truncation():
    a, b = pair()
    shuttle(a, b)
    a.send_data(b"x" * 40000)
    a.close()
    wire = a.data_to_send()
    events = []
    for i in range(0, len(wire), 7):  # byte dribbles reassemble
        events += b.receive_data(wire[i : i + 7], 0.0)
    data = b"".join(e.data for e in events if isinstance(e, DataReceived))
    assert data == b"x" * 40000 and isinstance(events[-1], EndOfStream)
    assert b.peer_closed() == []
    b.send_data(b"reply")
    b.data_to_send()
    with pytest.raises(TruncationError):
        a.peer_closed()


def test_tampered_frame_is_an_integrity_error():
    a, b = pair()
    shuttle(a, b)
    a.send_data(b"hello")
    frame = bytearray(a.data_to_send())
    frame[4] ^= 0x01
    with pytest.raises(IntegrityError):
        b.receive_data(bytes(frame), 0.0)
    with pytest.raises(TepStateError):
        b.receive_data(b"", 0.0)


def test_every_transition_outside_the_table_is_refused():
    for state in enotest.State:
        for trigger in enotest.Trigger:
            core = enotest.EnoTestCore(TepContext(Role.A, TRANSCRIPT))
            core._state = state
            if (state, trigger) in enotest.TRANSITIONS:
                core._transition(trigger)
                assert core.state is enotest.TRANSITIONS[(state, trigger)]
            else:
                with pytest.raises(base.LocalProtocolError):
                    core._transition(trigger)


@pytest.mark.parametrize("seed", range(30))
def test_fuzz_parses_or_raises_a_tep_error(seed):
    rng = random.Random(seed)
    a, b = pair()
    if seed % 2:
        shuttle(a, b)
    junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    try:
        b.receive_data(junk, 0.0)
    except TepError:
        assert b.state is enotest.State.ERROR


def test_registered_as_explicit_only_and_labelled():
    spec = enotest.register()
    assert enotest.register() is spec and spec.explicit_only and not spec.standard
    assert spec.label == "TEST ONLY - not encryption" and spec.tep_id == 0x20
    assert spec not in StreamConfig().specs(), "never offered unless named"
    assert StreamConfig(teps=("eno-test",)).specs() == [spec]


def test_bad_magic_is_a_protocol_error():
    _, b = pair()
    with pytest.raises(RemoteProtocolError):
        b.receive_data(b"NOTENO!!" + bytes(16), 0.0)
