"""The hook's one-pass options reading answers exactly as the core's readers do."""

from __future__ import annotations

import random

import pytest

from testbed.eno import fastopt
from testbed.eno.errors import EnoError
from testbed.eno.tcp_options import append_eno, find_eno, nonempty_fastopen, option_space_left

PIECES = [
    bytes.fromhex("020405b4"), bytes.fromhex("0402"), bytes.fromhex("080a0000000100000000"),
    bytes.fromhex("010303 07"), b"\x01", bytes.fromhex("2202"), bytes.fromhex("220a") + bytes(8),
    bytes.fromhex("2203ff"), bytes.fromhex("4502"), bytes.fromhex("450320"),
    bytes.fromhex("45040120"), bytes.fromhex("fd0445 4e"), bytes.fromhex("1e0400ff"), b"\x00",
    b"\x00\x00\x00", bytes.fromhex("4501"), bytes.fromhex("45ff20"), bytes.fromhex("05"),
]


def random_block(rng: random.Random) -> bytes:
    out = b""
    for _ in range(rng.randrange(0, 8)):
        out += rng.choice(PIECES) if rng.random() < 0.85 else bytes(
            rng.randrange(256) for _ in range(rng.randrange(1, 4)))
    return out[: rng.choice([40, 40, 44, 60])]


def core_answers(block: bytes) -> tuple:
    return ([e.encode() for e in find_eno(block)], nonempty_fastopen(block),
            option_space_left(block))


@pytest.mark.parametrize("seed", range(400))
def test_view_reads_like_the_real_block(seed):
    rng = random.Random(seed)
    block = random_block(rng)
    found = fastopt.scan(block)
    assert core_answers(fastopt.core_view(found)) == core_answers(block), block.hex()
    assert [bytes(e) for e in found.enos] == core_answers(block)[0]


@pytest.mark.parametrize("seed", range(400))
def test_append_is_append_eno(seed):
    rng = random.Random(seed)
    block = random_block(rng)
    eno = rng.choice([bytes.fromhex("4502"), bytes.fromhex("450320"),
                      bytes.fromhex("4512") + bytes(16), bytes.fromhex("4503")])
    try:
        expected: bytes | type = append_eno(block, eno)
    except EnoError as exc:
        expected = type(exc)
    try:
        got: bytes | type = fastopt.append(block, eno, fastopt.scan(block))
    except EnoError as exc:
        got = type(exc)
    assert got == expected, block.hex()
