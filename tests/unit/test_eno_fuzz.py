"""Fuzzing the ENO readers: the only invariant is "parses, or raises EnoParseError".

Inputs are random bytes (fixed seeds, so a failure reproduces), mutations of valid
vectors, and every prefix of each (the byte-by-byte truncations a split or a middlebox
can produce). Nothing else may escape: no IndexError, no struct.error, no ValueError.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from testbed.eno.config import EnoConfig
from testbed.eno.errors import EnoParseError
from testbed.eno.events import Fallback, Negotiated
from testbed.eno.negotiation import EnoNegotiator, State
from testbed.eno.option import EnoOption, parse_eno, parse_eno_lenient
from testbed.eno.tcp_options import (
    encode_options,
    parse_options,
    parse_options_lenient,
    remove_eno,
)

SEEDS = range(8)
ROUNDS = 250
SEEDS_OF_VALID = [
    bytes.fromhex("2123"),
    bytes.fromhex("0123"),
    bytes.fromhex("21a3") + bytes(17),
    bytes.fromhex("90a3") + bytes(17) + b"\x21",
    bytes.fromhex("0381a30102" "9fa4") + bytes(32),
]
LINUX_SYN = bytes.fromhex("020405b4" "0402" "080a0000000100000000" "01" "030307")


def _biased_byte(rng: random.Random) -> int:
    """Mostly the interesting ENO ranges: global, length byte, TEP with and without v."""
    return rng.choice(
        [rng.randrange(0x00, 0x20), rng.randrange(0x80, 0xA0), rng.randrange(0x20, 0x80),
         rng.randrange(0xA0, 0x100), rng.randrange(0x100)]
    )


def _inputs(seed: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    for _ in range(ROUNDS):
        size = rng.randrange(0, 48)
        yield bytes(_biased_byte(rng) for _ in range(size))
        base = bytearray(rng.choice(SEEDS_OF_VALID))
        for _ in range(rng.randrange(1, 4)):  # flip, insert or delete a byte
            op = rng.randrange(3)
            pos = rng.randrange(len(base) + 1)
            if op == 0 and pos < len(base):
                base[pos] ^= 1 << rng.randrange(8)
            elif op == 1:
                base.insert(pos, _biased_byte(rng))
            elif pos < len(base):
                del base[pos]
        yield bytes(base)


def _prefixes(data: bytes) -> Iterator[bytes]:
    for end in range(len(data) + 1):
        yield data[:end]


def _check_eno(body: bytes) -> None:
    lenient = parse_eno_lenient(body)  # must never raise
    assert lenient.encode_body() == body
    try:
        option = parse_eno(body)
    except EnoParseError:
        assert lenient.error is not None
        return
    assert isinstance(option, EnoOption)
    assert lenient.error is None and lenient.suboptions == option.suboptions
    assert option.encode_body() == body  # strict parse, then encode: byte-exact
    assert parse_eno(option.encode_body()) == option


def _check_options(block: bytes) -> None:
    lenient = parse_options_lenient(block)  # must never raise
    assert encode_options(lenient) == block
    try:
        strict = parse_options(block)
    except EnoParseError:
        return
    assert strict == lenient
    assert len(remove_eno(block)) % 4 == 0


@pytest.mark.parametrize("seed", SEEDS)
def test_eno_contents_parse_or_raise(seed: int) -> None:
    checked = 0
    for data in _inputs(seed):
        for prefix in _prefixes(data):
            _check_eno(prefix)
            checked += 1
    assert checked > ROUNDS


@pytest.mark.parametrize("seed", SEEDS)
def test_options_block_parse_or_raise(seed: int) -> None:
    rng = random.Random(1000 + seed)
    for _ in range(ROUNDS):
        block = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 44)))
        for prefix in _prefixes(block):
            _check_options(prefix)
        # A plausible block with a fuzzed ENO option inside it.
        body = next(_inputs(rng.randrange(10**6)))[:18]
        framed = LINUX_SYN + bytes((0x45, len(body) + 2)) + body
        for prefix in _prefixes(framed):
            _check_options(prefix)


@pytest.mark.parametrize("seed", SEEDS)
def test_negotiator_survives_garbage(seed: int) -> None:
    """A passive end fed any SYN options block falls back or proceeds; it never raises."""
    rng = random.Random(2000 + seed)
    for data in _inputs(seed):
        block = bytes((0x45, len(data) + 2)) + data if rng.random() < 0.8 else data
        neg = EnoNegotiator(EnoConfig(teps=(0x23, 0x21)), active=False)
        neg.receive_syn(block, payload_len=rng.randrange(2))
        assert neg.state in (State.SYN_RECEIVED, State.DISABLED)
        assert (neg.state is State.DISABLED) == isinstance(neg.outcome, Fallback)
        synack = neg.send_synack().option
        neg.receive_ack(bytes.fromhex("4502"))
        assert (synack is None) == (neg.state is State.DISABLED)
        assert synack is None or isinstance(neg.outcome, Negotiated)


def test_every_two_byte_contents() -> None:
    """Exhaustive over all 65,536 two-byte bodies: length bytes and their followers."""
    for first in range(256):
        for second in range(256):
            _check_eno(bytes((first, second)))
