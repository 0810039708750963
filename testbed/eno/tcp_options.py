"""A generic TCP options codec: a table ``kind -> codec``, strict and lenient readers.

The NFQUEUE hook works on the raw options block of real segments, so this module is
pure ``bytes -> objects -> bytes``:

* ``parse_options`` (strict, for endpoints) raises ``EnoParseError`` on any malformed
  block; ``parse_options_lenient`` (for middlebox observers) never raises and keeps
  what it cannot read as ``RawOption`` / ``MalformedTail`` so ``encode_options`` gives
  the input back byte for byte.
* Unknown kinds always survive as ``RawOption(kind, data)``.
* ``append_eno`` / ``remove_eno`` edit raw blocks: existing bytes are copied verbatim
  and the result is padded to a multiple of 4 (RFC 9293 §3.1).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from testbed.eno import constants as c
from testbed.eno.errors import EnoEncodeError, EnoParseError, OptionSpaceError
from testbed.eno.option import EnoOption, LenientEno, parse_eno, parse_eno_lenient
from testbed.packet import walk_options


class TcpOption:
    """Base of every TCP option object; ``encode()`` gives its exact wire bytes."""

    kind: int

    def encode(self) -> bytes:
        raise NotImplementedError


def _tlv(kind: int, data: bytes) -> bytes:
    if len(data) > c.MAX_OPTION_BODY:
        raise EnoEncodeError(f"option kind {kind} with {len(data)} data bytes is too long")
    return bytes((kind, len(data) + c.OPTION_HEADER_LEN)) + data


@dataclass(frozen=True)
class EndOfOptionList(TcpOption):
    """Kind 0. ``padding`` is whatever follows it in the block (zeros, RFC 9293 §3.1)."""

    padding: bytes = b""
    kind: int = field(default=c.KIND_EOL, init=False, repr=False)

    def encode(self) -> bytes:
        return bytes((c.KIND_EOL,)) + self.padding


@dataclass(frozen=True)
class NoOperation(TcpOption):
    kind: int = field(default=c.KIND_NOP, init=False, repr=False)

    def encode(self) -> bytes:
        return bytes((c.KIND_NOP,))


@dataclass(frozen=True)
class MaxSegmentSize(TcpOption):
    mss: int
    kind: int = field(default=c.KIND_MSS, init=False, repr=False)

    def encode(self) -> bytes:
        return _tlv(self.kind, struct.pack("!H", self.mss))


@dataclass(frozen=True)
class WindowScale(TcpOption):
    shift: int
    kind: int = field(default=c.KIND_WSCALE, init=False, repr=False)

    def encode(self) -> bytes:
        return _tlv(self.kind, bytes((self.shift,)))


@dataclass(frozen=True)
class SackPermitted(TcpOption):
    kind: int = field(default=c.KIND_SACK_PERMITTED, init=False, repr=False)

    def encode(self) -> bytes:
        return _tlv(self.kind, b"")


@dataclass(frozen=True)
class Sack(TcpOption):
    blocks: tuple[tuple[int, int], ...]
    kind: int = field(default=c.KIND_SACK, init=False, repr=False)

    def encode(self) -> bytes:
        return _tlv(self.kind, b"".join(struct.pack("!II", *block) for block in self.blocks))


@dataclass(frozen=True)
class Timestamps(TcpOption):
    tsval: int
    tsecr: int
    kind: int = field(default=c.KIND_TIMESTAMPS, init=False, repr=False)

    def encode(self) -> bytes:
        return _tlv(self.kind, struct.pack("!II", self.tsval, self.tsecr))


@dataclass(frozen=True)
class FastOpen(TcpOption):
    """RFC 7413 §4.1.1. An empty cookie is a cookie request; RFC 8547 §4.7 forbids only a
    non-empty one beside ENO in a SYN."""

    cookie: bytes = b""
    kind: int = field(default=c.KIND_FASTOPEN, init=False, repr=False)

    def encode(self) -> bytes:
        return _tlv(self.kind, self.cookie)


@dataclass(frozen=True)
class Experimental(TcpOption):
    """Kind 253/254 with an RFC 6994 ExID. A 32-bit ExID appears as ``exid`` (its first 16
    bits, which RFC 6994 §3.1 makes unique) followed by the magic number in ``data``."""

    kind: int
    exid: int
    data: bytes = b""

    def encode(self) -> bytes:
        return _tlv(self.kind, struct.pack("!H", self.exid) + self.data)


@dataclass(frozen=True)
class Eno(TcpOption):
    """Kind 69 with its contents kept raw: SYN-form and non-SYN-form look alike on the wire
    (RFC 8547 §4.1), only the segment's SYN flag tells them apart."""

    body: bytes = b""
    kind: int = field(default=c.ENO_KIND, init=False, repr=False)

    def encode(self) -> bytes:
        return _tlv(self.kind, self.body)

    def syn_form(self) -> EnoOption:
        """Strict SYN-form reading (raises EnoParseError, RFC 8547 §4.4)."""
        return parse_eno(self.body)

    def syn_form_lenient(self) -> LenientEno:
        return parse_eno_lenient(self.body)


@dataclass(frozen=True)
class RawOption(TcpOption):
    """An unknown kind, or (lenient reading only) a known kind with an impossible length."""

    kind: int
    data: bytes = b""

    def encode(self) -> bytes:
        return _tlv(self.kind, self.data)


@dataclass(frozen=True)
class MalformedTail(TcpOption):
    """Lenient reading only: bytes that do not form an option (truncated header or length)."""

    raw: bytes
    kind: int = field(default=-1, init=False, repr=False)

    def encode(self) -> bytes:
        return self.raw


class _BadLength(Exception):
    """Internal: a known kind with a length its RFC does not allow."""


def _fixed(length: int, make: Callable[[bytes], TcpOption]) -> Callable[[bytes], TcpOption]:
    def decode(data: bytes) -> TcpOption:
        if len(data) + c.OPTION_HEADER_LEN != length:
            raise _BadLength(f"length {len(data) + 2}, expected {length}")
        return make(data)

    return decode


def _decode_sack(data: bytes) -> TcpOption:
    if not data or len(data) % c.SACK_BLOCK_LEN:
        raise _BadLength("SACK needs 1 or more 8-byte blocks (RFC 2018 §3)")
    words = struct.unpack(f"!{len(data) // 4}I", data)
    return Sack(tuple(zip(words[::2], words[1::2], strict=True)))


def _decode_fastopen(data: bytes) -> TcpOption:
    size = len(data)
    if size and not (c.TFO_MIN_COOKIE <= size <= c.TFO_MAX_COOKIE and size % 2 == 0):
        raise _BadLength("TFO length must be 2 or even 6..18 (RFC 7413 §4.1.1)")
    return FastOpen(data)


def _decode_experimental(kind: int) -> Callable[[bytes], TcpOption]:
    def decode(data: bytes) -> TcpOption:
        if len(data) < c.EXID_LEN:
            raise _BadLength("experimental option without an ExID (RFC 6994 §3)")
        return Experimental(kind, struct.unpack("!H", data[:2])[0], data[2:])

    return decode


# kind -> decoder of the option's data (the bytes after kind and length).
CODECS: dict[int, Callable[[bytes], TcpOption]] = {
    c.KIND_MSS: _fixed(c.LEN_MSS, lambda d: MaxSegmentSize(struct.unpack("!H", d)[0])),
    c.KIND_WSCALE: _fixed(c.LEN_WSCALE, lambda d: WindowScale(d[0])),
    c.KIND_SACK_PERMITTED: _fixed(c.LEN_SACK_PERMITTED, lambda d: SackPermitted()),
    c.KIND_SACK: _decode_sack,
    c.KIND_TIMESTAMPS: _fixed(c.LEN_TIMESTAMPS, lambda d: Timestamps(*struct.unpack("!II", d))),
    c.KIND_FASTOPEN: _decode_fastopen,
    c.KIND_EXPERIMENT_1: _decode_experimental(c.KIND_EXPERIMENT_1),
    c.KIND_EXPERIMENT_2: _decode_experimental(c.KIND_EXPERIMENT_2),
    c.ENO_KIND: lambda d: Eno(d),
}


def _scan(raw: bytes, strict: bool) -> list[tuple[int, TcpOption]]:
    """(offset, option) pairs; strict raises EnoParseError, lenient records the damage."""
    out: list[tuple[int, TcpOption]] = []
    if strict and len(raw) > c.MAX_TCP_OPTIONS_LEN:
        raise EnoParseError(f"{len(raw)} option bytes exceed the 40-byte TCP maximum")
    for kind, start, end, error in walk_options(raw):
        option: TcpOption
        if error is not None:
            if strict:
                raise EnoParseError(error)
            option = MalformedTail(raw[start:])
        elif kind == c.KIND_EOL:
            if strict and any(raw[start + 1 :]):
                raise EnoParseError("non-zero bytes after End of Option List (RFC 9293 §3.1)")
            option = EndOfOptionList(raw[start + 1 :])
        elif kind == c.KIND_NOP:
            option = NoOperation()
        else:
            data = raw[start + c.OPTION_HEADER_LEN : end]
            decoder = CODECS.get(kind)
            try:
                option = decoder(data) if decoder else RawOption(kind, data)
            except _BadLength as exc:
                if strict:
                    raise EnoParseError(f"option kind {kind} at offset {start}: {exc}") from None
                option = RawOption(kind, data)
        out.append((start, option))
    return out


def parse_options(raw: bytes) -> tuple[TcpOption, ...]:
    """Strictly parse a TCP options block; raises EnoParseError on any malformation."""
    return tuple(option for _, option in _scan(bytes(raw), strict=True))


def parse_options_lenient(raw: bytes) -> tuple[TcpOption, ...]:
    """Parse any bytes without raising; ``encode_options`` of the result equals ``raw``."""
    return tuple(option for _, option in _scan(bytes(raw), strict=False))


def encode_options(options: Iterable[TcpOption]) -> bytes:
    """Concatenate the options' exact wire bytes (no padding is added)."""
    return b"".join(option.encode() for option in options)


def pad_options(raw: bytes) -> bytes:
    """Pad with EOL then zero bytes to a multiple of 4 (RFC 9293 §3.1)."""
    return raw + bytes(-len(raw) % c.TCP_OPTIONS_ALIGN)


def _used_length(raw: bytes) -> int:
    """Bytes in use before the End of Option List (or the whole block if there is none)."""
    for offset, option in _scan(raw, strict=False):
        if isinstance(option, EndOfOptionList):
            return offset
    return len(raw)


def option_space_left(raw: bytes) -> int:
    """How many option bytes can still be added to this block (40-byte limit, §4.4)."""
    return max(0, c.MAX_TCP_OPTIONS_LEN - _used_length(bytes(raw)))


def find_eno(raw: bytes) -> tuple[Eno, ...]:
    """Every kind-69 option in the block (lenient reading: a damaged tail is skipped)."""
    return tuple(o for o in parse_options_lenient(raw) if isinstance(o, Eno))


def nonempty_fastopen(raw: bytes) -> bool:
    """A TFO option with a cookie is present (RFC 8547 §4.7 forbids it beside ENO in a SYN)."""
    return any(isinstance(o, FastOpen) and o.cookie for o in parse_options_lenient(raw))


def append_eno(raw: bytes, eno: bytes) -> bytes:
    """Copy ``raw`` up to its EOL verbatim, append the encoded ENO option, pad to 4 bytes.

    Raises OptionSpaceError when the result would exceed 40 bytes, LocalProtocolError
    (EnoEncodeError) when the block already has ENO (RFC 8547 §4.1: one per SYN) and
    EnoParseError when the block ends in bytes that do not form options.
    """
    raw = bytes(raw)
    scanned = _scan(raw, strict=False)
    if any(isinstance(o, MalformedTail) for _, o in scanned):
        raise EnoParseError("cannot append to an options block with a malformed tail")
    if any(isinstance(o, Eno) for _, o in scanned):
        raise EnoEncodeError("the options block already carries an ENO option")
    if len(eno) < c.OPTION_HEADER_LEN or eno[0] != c.ENO_KIND or eno[1] != len(eno):
        raise EnoEncodeError(f"not an encoded ENO option: {eno.hex()}")
    used = _used_length(raw)
    if used + len(eno) > c.MAX_TCP_OPTIONS_LEN:
        raise OptionSpaceError(f"ENO needs {len(eno)} bytes, {c.MAX_TCP_OPTIONS_LEN - used} left")
    return pad_options(raw[:used] + eno)


def remove_eno(raw: bytes, *, keep_length: bool = False) -> bytes:
    """Drop every kind-69 option, copying everything else verbatim.

    ``keep_length=False`` closes the gap and re-pads to a multiple of 4 (the caller must
    update the data offset); ``keep_length=True`` overwrites ENO with NOPs in place, the
    way many option-stripping middleboxes do, so the header length does not change.
    """
    raw = bytes(raw)
    out = bytearray()
    for offset, option in _scan(raw, strict=False):
        size = len(option.encode())
        if isinstance(option, Eno):
            if keep_length:
                out += bytes((c.KIND_NOP,)) * size
        elif isinstance(option, EndOfOptionList) and not keep_length:
            break
        else:
            out += raw[offset : offset + size]
    return bytes(out) if keep_length else pad_options(bytes(out))
