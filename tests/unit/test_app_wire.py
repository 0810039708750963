"""The workload's request header (testbed/apps/wire.py), byte for byte both ways."""

from __future__ import annotations

import pytest

from testbed.apps.wire import REQUEST, WireError, decode_request_header, encode_request, pattern


def test_a_request_is_its_header_then_padding() -> None:
    data = encode_request(7, 1024, 16)
    assert data[:REQUEST.size] == bytes.fromhex("5451 01 00 00000007 00000400")
    assert data[REQUEST.size:] == pattern(7 ^ 0x5A5A5A5A, 4)
    assert decode_request_header(data[:REQUEST.size]) == (7, 1024)


def test_the_header_alone_is_a_request_of_its_own_size() -> None:
    data = encode_request(0xDEADBEEF, 1, 12)
    assert data == bytes.fromhex("5451 01 00 deadbeef 00000001")
    assert decode_request_header(data) == (0xDEADBEEF, 1)


@pytest.mark.parametrize("header, why", [
    (bytes.fromhex("5451 01 00 00000001"), "12 bytes"),  # truncated
    (bytes.fromhex("5452 01 00 00000001 00000001"), "magic"),
    (bytes.fromhex("5451 02 00 00000001 00000001"), "magic/version"),
])
def test_a_bad_header_is_refused_with_its_reason(header: bytes, why: str) -> None:
    with pytest.raises(WireError, match=why):
        decode_request_header(header)
