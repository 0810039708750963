"""One pass over a TCP options block for the hook's hot path.

The pure core reads an options block (testbed/eno/tcp_options.py) by decoding every option
into an object, and on one segment it does so up to four times (TFO check, room left, ENO
lookup; then ``append_eno`` twice more). On a kernel SYN that is about 25 µs of the hook's
time per segment. What the core looks at is little: the ENO options (RFC 8547 §4.1), the TFO
option (§4.7), and where the options end, EOL or a malformed tail (RFC 9293 §3.1), which
gives the room left (§4.4, 40 bytes).

``scan`` reads that in one pass without objects. ``core_view`` builds a block that gives every
lenient reading the core does -- ``find_eno``, ``nonempty_fastopen``, ``option_space_left`` --
the same answer as the real block: the ENO and TFO options as they are, in order, then one
filler option of a kind no codec knows, as long as the rest of the used bytes. ``append``
is ``append_eno`` for the real block (copy up to EOL, append, pad) using the scan. Both are
property-tested against the core on random blocks (tests/unit/test_eno_fastopt.py); the
core still makes every decision.
"""

from __future__ import annotations

from dataclasses import dataclass

from testbed.eno.constants import (
    ENO_KIND,
    KIND_EOL,
    KIND_FASTOPEN,
    KIND_NOP,
    MAX_TCP_OPTIONS_LEN,
    OPTION_HEADER_LEN,
    TCP_OPTIONS_ALIGN,
)
from testbed.eno.errors import EnoEncodeError, EnoParseError, OptionSpaceError

FILLER_KIND = 0xF0  # unassigned (RFC 9293 registry), and in no codec of tcp_options.CODECS


@dataclass(frozen=True, slots=True)
class Scan:
    used: int  # bytes before EOL (or the whole block if there is none)
    malformed: bool  # the block ends in bytes that do not form an option
    enos: tuple[bytes, ...]  # every kind-69 option, whole (kind and length included)
    relevant: bytes  # ENO and TFO options, in order: all the core looks at


def scan(raw: bytes) -> Scan:
    """Read ``raw`` the way the core's lenient scanner does, keeping only what it uses."""
    i, n = 0, len(raw)
    enos: list[bytes] = []
    relevant: list[bytes] = []
    while i < n:
        kind = raw[i]
        if kind == KIND_EOL:
            return Scan(i, False, tuple(enos), b"".join(relevant))
        if kind == KIND_NOP:
            i += 1
            continue
        length = raw[i + 1] if i + 1 < n else 0
        if length < OPTION_HEADER_LEN or i + length > n:
            return Scan(n, True, tuple(enos), b"".join(relevant))
        if kind in (ENO_KIND, KIND_FASTOPEN):
            option = raw[i : i + length]
            relevant.append(option)
            if kind == ENO_KIND:
                enos.append(option)
        i += length
    return Scan(n, False, tuple(enos), b"".join(relevant))


def core_view(found: Scan) -> bytes:
    """A short block the core reads exactly as it would read the scanned one."""
    rest = found.used - len(found.relevant)
    if rest <= 0:
        return found.relevant
    if rest == 1:
        return found.relevant + bytes((KIND_NOP,))
    return found.relevant + bytes((FILLER_KIND, rest)) + bytes(rest - OPTION_HEADER_LEN)


def append(raw: bytes, eno: bytes, found: Scan) -> bytes:
    """``tcp_options.append_eno(raw, eno)``, the same errors included, from a scan of raw."""
    if found.malformed:
        raise EnoParseError("cannot append to an options block with a malformed tail")
    if found.enos:
        raise EnoEncodeError("the options block already carries an ENO option")
    if len(eno) < OPTION_HEADER_LEN or eno[0] != ENO_KIND or eno[1] != len(eno):
        raise EnoEncodeError(f"not an encoded ENO option: {eno.hex()}")
    if found.used + len(eno) > MAX_TCP_OPTIONS_LEN:
        left = MAX_TCP_OPTIONS_LEN - found.used
        raise OptionSpaceError(f"ENO needs {len(eno)} bytes, {left} left")
    out = raw[: found.used] + eno
    return out + bytes(-len(out) % TCP_OPTIONS_ALIGN)
