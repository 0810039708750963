"""The TCP-ENO option codec (RFC 8547 §4.1, §4.2, §4.4).

Two readers share one scanner:

* ``parse_eno`` is for endpoints. It is strict: every malformation RFC 8547 names
  (§4.4: a length byte whose data would run past the option, a length byte followed by
  0x00-0x9f) and every impossibility (contents longer than a TCP header can hold) raises
  ``EnoParseError``. The caller then treats the option as absent and disables
  encryption (§4.4, §4.6).
* ``parse_eno_lenient`` is for middlebox observers. It never raises, keeps the raw
  contents so ``encode()`` reproduces the input byte for byte, and offers the
  suboptions it could read plus a description of the first malformation.

Only SYN-form options have structure; a non-SYN-form option's contents are opaque to ENO
(§4.1 Figure 3) and are handled as raw bytes by the TCP options codec.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from testbed.eno import constants as c
from testbed.eno.errors import EnoEncodeError, EnoParseError


@dataclass(frozen=True)
class GlobalSuboption:
    """A global suboption byte 0x00-0x1f (§4.2 Figure 5): ``0 0 0 z1 z2 z3 a b``.

    ``z`` keeps the three reserved bits as received so a round trip is exact; senders
    MUST leave them 0 and receivers MUST ignore them (§4.2).
    """

    b: bool = False
    a: bool = False
    z: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.z <= 0b111:
            raise EnoEncodeError(f"global suboption z bits {self.z:#x} do not fit in 3 bits")

    @property
    def byte(self) -> int:
        return (self.z << c.GLOBAL_Z_SHIFT) | (c.GLOBAL_A_BIT * self.a) | (c.GLOBAL_B_BIT * self.b)

    @classmethod
    def from_byte(cls, value: int) -> GlobalSuboption:
        if not 0 <= value <= c.GLOBAL_MAX:
            raise EnoEncodeError(f"{value:#04x} is not a global suboption (0x00-0x1f, §4.2)")
        return cls(
            b=bool(value & c.GLOBAL_B_BIT),
            a=bool(value & c.GLOBAL_A_BIT),
            z=(value & c.GLOBAL_Z_MASK) >> c.GLOBAL_Z_SHIFT,
        )


IMPLICIT_GLOBAL = GlobalSuboption()  # §4.2: no explicit global suboption means 0x00


@dataclass(frozen=True)
class TepSuboption:
    """A TEP identifier suboption (§4.1 Table 1, §4.4).

    ``data is None``: v = 0, a one-byte suboption. ``data`` given: v = 1 and the data
    follows, either to the end of the option (must then be last) or, with
    ``explicit_length``, introduced by a length byte (1..32 bytes, §4.4 Figure 7).
    """

    tep_id: int
    data: bytes | None = None
    explicit_length: bool = False

    def __post_init__(self) -> None:
        if not c.TEP_ID_MIN <= self.tep_id <= c.TEP_ID_MAX:
            raise EnoEncodeError(f"TEP id {self.tep_id:#x} outside 0x20-0x7f (§4.1)")
        if self.explicit_length:
            size = -1 if self.data is None else len(self.data)
            if not c.MIN_LENGTH_BYTE_DATA <= size <= c.MAX_LENGTH_BYTE_DATA:
                raise EnoEncodeError("a length byte covers 1..32 data bytes (§4.4 Figure 6)")

    @property
    def v(self) -> bool:
        return self.data is not None

    @property
    def byte(self) -> int:
        """The initial suboption byte: v and the TEP id (what a session ID starts with, §5.1)."""
        return (c.V_BIT if self.v else 0) | self.tep_id

    def encode(self, *, last: bool) -> bytes:
        if self.data is None:
            return bytes((self.tep_id,))
        if self.explicit_length:
            length_byte = c.LENGTH_BYTE_MIN | (len(self.data) - 1)
            return bytes((length_byte, self.byte)) + self.data
        if not last:
            # Without a length byte the data runs to the end of the option (§4.4).
            raise EnoEncodeError(f"TEP {self.tep_id:#x}: data without length byte, not last")
        return bytes((self.byte,)) + self.data


Suboption = GlobalSuboption | TepSuboption


def _encode_suboptions(suboptions: Sequence[Suboption]) -> bytes:
    out = bytearray()
    for index, sub in enumerate(suboptions):
        if isinstance(sub, GlobalSuboption):
            out.append(sub.byte)
        else:
            out += sub.encode(last=index == len(suboptions) - 1)
    return bytes(out)


def _with_header(body: bytes) -> bytes:
    if len(body) > c.MAX_OPTION_BODY:
        raise EnoEncodeError(f"{len(body)} content bytes do not fit one TCP option (max 253)")
    return bytes((c.ENO_KIND, len(body) + c.OPTION_HEADER_LEN)) + body


class _SuboptionView:
    """Read-only accessors shared by the strict and the lenient option forms."""

    suboptions: tuple[Suboption, ...]

    @property
    def explicit_global(self) -> GlobalSuboption | None:
        """The first global suboption; later ones MUST be ignored (§4.2)."""
        for sub in self.suboptions:
            if isinstance(sub, GlobalSuboption):
                return sub
        return None

    @property
    def global_suboption(self) -> GlobalSuboption:
        """The effective global suboption, implicit 0x00 when absent (§4.2)."""
        return self.explicit_global or IMPLICIT_GLOBAL

    @property
    def teps(self) -> tuple[TepSuboption, ...]:
        return tuple(sub for sub in self.suboptions if isinstance(sub, TepSuboption))

    @property
    def tep_ids(self) -> tuple[int, ...]:
        return tuple(sub.tep_id for sub in self.teps)

    @property
    def vacuous(self) -> bool:
        """No TEP identifier at all (§4.6): the connection must fall back."""
        return not self.teps

    @property
    def syn_tep(self) -> int | None:
        """The last TEP id: the one that gives SYN data its meaning (§4.7)."""
        teps = self.teps
        return teps[-1].tep_id if teps else None

    def suboptions_for(self, tep_id: int) -> tuple[TepSuboption, ...]:
        return tuple(sub for sub in self.teps if sub.tep_id == tep_id)


@dataclass(frozen=True)
class EnoOption(_SuboptionView):
    """A well-formed SYN-form ENO option (§4.1 Figure 2)."""

    suboptions: tuple[Suboption, ...] = ()

    @classmethod
    def build(
        cls, teps: Iterable[TepSuboption | int], global_: GlobalSuboption | None = None
    ) -> EnoOption:
        """Canonical option: optional global first, then ``teps`` in wire order.

        Data suboptions that are not last get a length byte (§4.4); the last one relies on
        the option length, which saves a byte (§8.2).
        """
        subs = [t if isinstance(t, TepSuboption) else TepSuboption(t) for t in teps]
        fixed: list[Suboption] = [] if global_ is None else [global_]
        for index, sub in enumerate(subs):
            needs_length = sub.data is not None and index < len(subs) - 1
            if needs_length != sub.explicit_length and sub.data is not None:
                sub = TepSuboption(sub.tep_id, sub.data, explicit_length=needs_length)
            fixed.append(sub)
        return cls(tuple(fixed))

    def encode_body(self) -> bytes:
        return _encode_suboptions(self.suboptions)

    def encode(self) -> bytes:
        """Kind, length and contents, as they go into a SYN (and into the transcript, §4.8)."""
        body = self.encode_body()
        if len(body) > c.MAX_SYN_ENO_BODY:
            raise EnoEncodeError(f"SYN-form ENO of {len(body)} content bytes exceeds 38 (§4.4)")
        return _with_header(body)


@dataclass(frozen=True)
class LenientEno(_SuboptionView):
    """What a middlebox observer reads from any ENO contents; lossless.

    ``suboptions`` are those read before the first malformation, ``error`` describes that
    malformation (None when a strict parser would accept the bytes) and ``tail`` holds the
    unread bytes. ``encode_body()`` always returns ``body`` unchanged.
    """

    body: bytes
    suboptions: tuple[Suboption, ...]
    error: str | None
    tail: bytes = b""

    @property
    def well_formed(self) -> bool:
        return self.error is None

    def encode_body(self) -> bytes:
        return self.body

    def encode(self) -> bytes:
        return _with_header(self.body)

    def strict(self) -> EnoOption:
        if self.error is not None:
            raise EnoParseError(self.error)
        return EnoOption(self.suboptions)


def _scan(body: bytes) -> tuple[list[Suboption], str | None, int]:
    """Read suboptions; returns them, the first malformation (or None) and where it stopped."""
    subs: list[Suboption] = []
    i, n = 0, len(body)
    while i < n:
        first = body[i]
        glt = first & c.GLT_MASK
        if not first & c.V_BIT:
            # v = 0: the byte is the whole suboption, a global one or a bare TEP id (Table 1).
            sub: Suboption = (
                GlobalSuboption.from_byte(glt) if glt < c.TEP_ID_MIN else TepSuboption(glt)
            )
            subs.append(sub)
            i += 1
        elif glt >= c.TEP_ID_MIN:
            # v = 1 TEP id without a length byte: its data runs to the end of the option (§4.4).
            subs.append(TepSuboption(glt, body[i + 1 :]))
            i = n
        else:
            size = (first & c.LENGTH_BYTE_MASK) + 1
            if i + 1 >= n:
                return subs, f"length byte {first:#04x} at offset {i} is the last byte (§4.4)", i
            follower = body[i + 1]
            if follower < c.MIN_BYTE_AFTER_LENGTH:
                return subs, f"length byte followed by {follower:#04x}, not a v=1 TEP (§4.4)", i
            if i + 2 + size > n:
                return subs, f"length byte at offset {i}: {size} data bytes overrun (§4.4)", i
            subs.append(TepSuboption(follower & c.GLT_MASK, body[i + 2 : i + 2 + size], True))
            i += 2 + size
    return subs, None, n


def parse_eno_lenient(option_body: bytes) -> LenientEno:
    """Read any ENO contents without raising; ``encode_body()`` gives the input back."""
    body = bytes(option_body)
    subs, error, stop = _scan(body)
    if error is None and len(body) > c.MAX_SYN_ENO_BODY:
        error = f"{len(body)} content bytes cannot fit in a TCP header (38 max, §4.4)"
    return LenientEno(body=body, suboptions=tuple(subs), error=error, tail=body[stop:])


def parse_eno(option_body: bytes) -> EnoOption:
    """Strictly parse SYN-form ENO contents (after kind and length); raises EnoParseError."""
    return parse_eno_lenient(option_body).strict()


def parse_eno_option(raw: bytes) -> EnoOption:
    """Strictly parse a whole ENO option, kind and length bytes included."""
    if len(raw) < c.OPTION_HEADER_LEN or raw[0] != c.ENO_KIND:
        raise EnoParseError(f"not an ENO option: {raw[:2].hex()}")
    if raw[1] != len(raw):
        raise EnoParseError(f"ENO length byte {raw[1]} but {len(raw)} bytes given")
    return parse_eno(raw[c.OPTION_HEADER_LEN :])


def encode_non_syn_eno(contents: bytes = b"") -> bytes:
    """A non-SYN-form ENO option (§4.1 Figure 3); empty unless the TEP defines contents."""
    return _with_header(contents)
