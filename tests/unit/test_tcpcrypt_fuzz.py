"""Fuzzing Init1, Init2 and frames: the only invariant is "parses, or raises our protocol error".

Inputs are random bytes and single mutations of valid messages, fed whole to the parsers and
whole and byte by byte to cores. Cores must also never hand out data that was not sent.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

import pytest

from testbed.teps.base import (
    DataReceived,
    RemoteProtocolError,
    Role,
    TepContext,
    TepEvent,
    TepStateError,
)
from testbed.teps.tcpcrypt.constants import INIT1_MAGIC, INIT2_MAGIC, TEPS, AeadId, TepId
from testbed.teps.tcpcrypt.core import TcpcryptCore
from testbed.teps.tcpcrypt.keys import TrafficKey
from testbed.teps.tcpcrypt.loopback import DeterministicRandom
from testbed.teps.tcpcrypt.wire import (
    Plaintext,
    frame_length,
    init1_min_len,
    init2_min_len,
    init_length,
    open_frame,
    pull_frame,
    pull_init1,
    pull_init2,
    pull_plaintext,
    seal_frame,
)

CASES = 300


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One random edit: flip, set, truncate, extend, insert or delete."""
    buf = bytearray(data)
    kind = rng.randrange(6)
    pos = rng.randrange(len(buf)) if buf else 0
    if kind == 0 and buf:
        buf[pos] ^= 1 << rng.randrange(8)
    elif kind == 1 and buf:
        buf[pos] = rng.choice([0x00, 0xFF, 0x80, 0x01, rng.randrange(256)])
    elif kind == 2:
        del buf[pos:]
    elif kind == 3:
        buf += rng.randbytes(rng.randrange(1, 40))
    elif kind == 4:
        buf[pos:pos] = rng.randbytes(rng.randrange(1, 5))
    elif buf:
        del buf[pos : pos + rng.randrange(1, 5)]
    return bytes(buf)


def inputs(rng: random.Random, valid: bytes) -> list[bytes]:
    out = [rng.randbytes(rng.randrange(0, 160)) for _ in range(CASES // 3)]
    out += [valid[:4] + rng.randbytes(rng.randrange(0, 120)) for _ in range(CASES // 3)]
    out += [mutate(rng, valid) for _ in range(CASES)]
    return out


def parses_or_protocol_error(parse: Callable[[bytes], object], data: bytes) -> bool:
    """True if ``data`` parsed, False if it raised our protocol error; anything else escapes."""
    try:
        parse(data)
    except RemoteProtocolError:
        return False
    return True


def valid_messages(tep: int) -> tuple[bytes, bytes]:
    a = TcpcryptCore(TepContext(Role.A, b"", DeterministicRandom("fa")), tep)
    b = TcpcryptCore(TepContext(Role.B, b"", DeterministicRandom("fb")), tep)
    a.start(0.0)
    b.start(0.0)
    init1 = a.data_to_send()
    b.receive_data(init1, 0.0)
    return init1, b.data_to_send()


# -- the parsers, whole ---------------------------------------------------------------------


@pytest.mark.parametrize("tep", sorted(TEPS))
def test_fuzz_init_parsers(tep: int) -> None:
    rng = random.Random(tep)
    params = TEPS[tep]
    init1, init2 = valid_messages(tep)
    parsed = Counter[bool]()
    for data in inputs(rng, init1):
        parsed[parses_or_protocol_error(lambda d: pull_init1(d, params), data)] += 1
        parses_or_protocol_error(lambda d: init_length(d, INIT1_MAGIC, init1_min_len(params)), data)
    for data in inputs(rng, init2):
        parsed[parses_or_protocol_error(lambda d: pull_init2(d, params), data)] += 1
        parses_or_protocol_error(lambda d: init_length(d, INIT2_MAGIC, init2_min_len(params)), data)
    assert parsed[True] and parsed[False]  # the mutations reach both outcomes


def test_fuzz_frame_parsers() -> None:
    rng = random.Random(99)
    key = TrafficKey(AeadId.AES_128_GCM, bytes(28))
    valid = seal_frame(key, 0, Plaintext(b"payload", urgent=2))
    opened = Counter[bool]()
    for data in inputs(rng, valid):
        parses_or_protocol_error(frame_length, data)
        parses_or_protocol_error(pull_plaintext, data)
        opened[parses_or_protocol_error(lambda d: open_frame(key, 0, pull_frame(d)), data)] += 1
    # Only unmodified frames open (a mutation may re-create the original, e.g. a same-byte set).
    assert opened[False] > CASES


# -- cores, whole and byte by byte ----------------------------------------------------------


def feed(core: TcpcryptCore, data: bytes, byte_by_byte: bool) -> list[TepEvent]:
    """Feed ``data``; the first protocol error ends the run, and then the core is dead."""
    pieces = [data[i : i + 1] for i in range(len(data))] if byte_by_byte else [data]
    events: list[TepEvent] = []
    for piece in pieces:
        try:
            events += core.receive_data(piece, 0.0)
        except RemoteProtocolError:
            with pytest.raises(TepStateError):
                core.receive_data(b"", 0.0)
            break
    return events


def fresh_core(role: Role, tep: int) -> TcpcryptCore:
    core = TcpcryptCore(TepContext(role, b"", DeterministicRandom(f"f{role.value}")), tep)
    core.start(0.0)
    core.data_to_send()
    return core


@pytest.mark.parametrize("byte_by_byte", [False, True])
@pytest.mark.parametrize("tep", [TepId.X25519, TepId.P256])
def test_fuzz_handshake_cores(tep: int, byte_by_byte: bool) -> None:
    rng = random.Random(tep + byte_by_byte)
    init1, init2 = valid_messages(tep)
    for data in inputs(rng, init1)[:: 3 if byte_by_byte else 1]:
        events = feed(fresh_core(Role.B, tep), data, byte_by_byte)
        assert not any(isinstance(e, DataReceived) for e in events)
    for data in inputs(rng, init2)[:: 3 if byte_by_byte else 1]:
        events = feed(fresh_core(Role.A, tep), data, byte_by_byte)
        assert not any(isinstance(e, DataReceived) for e in events)


def established_pair() -> tuple[TcpcryptCore, TcpcryptCore]:
    a = TcpcryptCore(TepContext(Role.A, b"", DeterministicRandom("fA")), TepId.X25519)
    b = TcpcryptCore(TepContext(Role.B, b"", DeterministicRandom("fB")), TepId.X25519)
    a.start(0.0)
    b.start(0.0)
    b.receive_data(a.data_to_send(), 0.0)
    a.receive_data(b.data_to_send(), 0.0)
    return a, b


@pytest.mark.parametrize("byte_by_byte", [False, True])
def test_fuzz_frames_into_established_core(byte_by_byte: bool) -> None:
    rng = random.Random(7 + byte_by_byte)
    sent = b"".join(bytes([i]) * (i * 7 % 50) for i in range(20))
    a, _ = established_pair()
    for i in range(0, len(sent), 40):
        a.send_data(sent[i : i + 40])
    a.rekey()
    a.send_data(b"after rekey")
    a.close()
    stream = a.data_to_send()
    whole = sent + b"after rekey"
    for data in inputs(rng, stream)[:: 4 if byte_by_byte else 1]:
        _, b = established_pair()
        events = feed(b, data, byte_by_byte)
        got = b"".join(e.data for e in events if isinstance(e, DataReceived))
        assert whole.startswith(got)  # only authenticated bytes, in order, ever come out
    _, b = established_pair()
    events = feed(b, stream, byte_by_byte)
    assert b"".join(e.data for e in events if isinstance(e, DataReceived)) == whole
