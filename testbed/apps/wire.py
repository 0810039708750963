"""The request/response workload's own tiny wire format and payload pattern.

A request is a 12-byte header (magic "TQ", version 1, reserved byte, request id,
response size, both big-endian u32... see ``REQUEST``) followed by padding to the
requested size. The response is ``response_size`` bytes of a pattern derived
from the request id, so the client verifies every byte it receives.
"""

from __future__ import annotations

import struct

REQUEST = struct.Struct("!2sBBII")  # magic, version, reserved, request id, response size
MAGIC = b"TQ"
VERSION = 1
_CYCLE = 251  # prime, so the pattern never lines up with power-of-two buffer sizes
_BLOCK = bytes(range(_CYCLE)) * 2


class WireError(ValueError):
    """A request that is not this workload's."""


def encode_request(request_id: int, response_size: int, request_size: int) -> bytes:
    header = REQUEST.pack(MAGIC, VERSION, 0, request_id, response_size)
    return header + pattern(request_id ^ 0x5A5A5A5A, max(0, request_size - REQUEST.size))


def decode_request_header(data: bytes) -> tuple[int, int]:
    """-> (request id, response size); raises WireError on anything else."""
    if len(data) != REQUEST.size:
        raise WireError(f"request header must be {REQUEST.size} bytes, got {len(data)}")
    magic, version, _reserved, request_id, response_size = REQUEST.unpack(data)
    if magic != MAGIC or version != VERSION:
        raise WireError(f"bad request magic/version {magic!r}/{version}")
    return request_id, response_size


def pattern(seed: int, length: int, offset: int = 0) -> bytes:
    """``length`` bytes of the pattern for ``seed`` starting at stream ``offset``."""
    out = bytearray()
    start = (seed + offset) % _CYCLE
    while len(out) < length:
        take = min(length - len(out), _CYCLE)
        out += _BLOCK[start : start + take]
        start = (start + take) % _CYCLE
    return bytes(out)
