"""tcpcrypt wire formats: Init1, Init2 (RFC 8548 §4.1) and encryption frames (§3.6, §4.2).

Every format is a ``pull_x`` / ``push_x`` pair. ``pull_*`` take exactly one message and reject
anything malformed with a ``WireError`` (a ``RemoteProtocolError``); the length helpers
(``init_length``, ``frame_length``) let a stream parser find where a message ends before it
is complete. All integers are big-endian (§4).

Layouts (byte offsets)::

    Init1  0 INIT1_MAGIC(4) | 4 M(4) | 8 K(1) | 9 sym_cipher[K](2 each) | 9+2K N_A | Pub_A | ign.
    Init2  0 INIT2_MAGIC(4) | 4 M(4) | 8 sym_cipher(2) | 10 N_B | Pub_B | ignored
    frame  control(1) | clen(2) | ciphertext[clen]          AD = control | clen (§4.2.2)
    plain  flags(1) | [urgent(2) if URGp] | data            (§4.2.1)
"""

from __future__ import annotations

from dataclasses import dataclass

from .constants import (
    AEAD_TAG_LEN,
    AEADS,
    CIPHER_ID_LEN,
    CONTROL_REKEY,
    FLAG_FINP,
    FLAG_URGP,
    FLAGS_LEN,
    FRAME_HEADER_LEN,
    INIT1_MAGIC,
    INIT2_MAGIC,
    INIT_HEADER_LEN,
    MAGIC_LEN,
    MAX_CLEN,
    MAX_INIT_LEN,
    MESSAGE_LEN_FIELD,
    N_A_LEN,
    N_B_LEN,
    NCIPHERS_FIELD,
    PUBKEY_LEN_FIELD,
    URGENT_LEN,
    Kex,
    TepParams,
)
from .errors import BadLengthError, BadMagicError, BadPublicKeyError, CipherError, WireError
from .keys import TrafficKey

# ---------------------------------------------------------------------------
# A bounds-checked reader (every short read is the peer's fault)
# ---------------------------------------------------------------------------


class Buffer:
    """Sequential reader over one received message."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def pull_bytes(self, n: int) -> bytes:
        if n < 0 or n > self.remaining:
            raise BadLengthError(f"message truncated: need {n} bytes, {self.remaining} left")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def pull_uint(self, size: int) -> int:
        return int.from_bytes(self.pull_bytes(size), "big")

    def pull_rest(self) -> bytes:
        return self.pull_bytes(self.remaining)


# ---------------------------------------------------------------------------
# Init1 / Init2 (RFC 8548 §4.1)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Init1:
    """A -> B: sym_cipher_list, N_A, Pub_A (§3.3). ``ignored`` is empty when we send (§4.1)."""

    ciphers: tuple[int, ...]
    nonce: bytes
    pub: bytes
    ignored: bytes = b""


@dataclass(frozen=True)
class Init2:
    """B -> A: sym_cipher, N_B, Pub_B (§3.3)."""

    cipher: int
    nonce: bytes
    pub: bytes
    ignored: bytes = b""


def init1_min_len(params: TepParams) -> int:
    """Smallest valid Init1: one cipher and no ignored tail (nciphers = 0 is useless, §3.3)."""
    return INIT_HEADER_LEN + NCIPHERS_FIELD + CIPHER_ID_LEN + N_A_LEN + params.pub_len


def init2_min_len(params: TepParams) -> int:
    return INIT_HEADER_LEN + CIPHER_ID_LEN + N_B_LEN + params.pub_len


def init_length(prefix: bytes | bytearray, magic: int, min_len: int) -> int | None:
    """message_len M of the Init message ``prefix`` starts with, or None if unknown yet.

    Fails as soon as the magic bytes seen so far differ (§4.1, §4.3), so a peer that is not
    speaking tcpcrypt is caught at its first byte.
    """
    expected = magic.to_bytes(MAGIC_LEN, "big")
    seen = prefix[:MAGIC_LEN]
    if expected[: len(seen)] != seen:
        raise BadMagicError(f"bad magic {seen.hex()}, expected {expected.hex()} (RFC 8548 §4.3)")
    if len(prefix) < INIT_HEADER_LEN:
        return None
    length = int.from_bytes(prefix[MAGIC_LEN:INIT_HEADER_LEN], "big")
    if not min_len <= length <= MAX_INIT_LEN:
        raise BadLengthError(f"message_len {length} outside [{min_len}, {MAX_INIT_LEN}]")
    return length


def _check_pub_encoding(params: TepParams, pub: bytes) -> None:
    """Encoding checks on Pub (§5); curve validation is done by keys.key_agreement."""
    if params.kex is not Kex.NIST:
        return  # X25519/X448: every 32/56-byte string is an encoding (RFC 7748 §5)
    declared = int.from_bytes(pub[:PUBKEY_LEN_FIELD], "big")
    if declared != params.pub_len:
        raise BadLengthError(f"pubkey_len {declared}, expected {params.pub_len} (§5)")
    if pub[PUBKEY_LEN_FIELD] not in (0x02, 0x03):
        raise BadPublicKeyError("public key is not in compressed format (RFC 8548 §5)")


def _pull_header(buf: Buffer, magic: int, total: int, min_len: int) -> None:
    got = buf.pull_uint(MAGIC_LEN)
    if got != magic:
        raise BadMagicError(f"bad magic {got:#010x}, expected {magic:#010x} (RFC 8548 §4.3)")
    length = buf.pull_uint(MESSAGE_LEN_FIELD)
    if length != total:
        raise BadLengthError(f"message_len {length} but {total} bytes given (§4.1)")
    if not min_len <= length <= MAX_INIT_LEN:
        raise BadLengthError(f"message_len {length} outside [{min_len}, {MAX_INIT_LEN}]")


def pull_init1(data: bytes, params: TepParams) -> Init1:
    """Parse one whole Init1 (exactly message_len bytes)."""
    buf = Buffer(data)
    _pull_header(buf, INIT1_MAGIC, len(data), init1_min_len(params))
    count = buf.pull_uint(NCIPHERS_FIELD)
    if count == 0:
        raise CipherError("Init1 offers no cipher (nciphers = 0)")
    # Unknown ids are legal in A's list (the registry may grow, §7); B just never picks them.
    ciphers = tuple(buf.pull_uint(CIPHER_ID_LEN) for _ in range(count))
    nonce = buf.pull_bytes(N_A_LEN)
    pub = buf.pull_bytes(params.pub_len)
    _check_pub_encoding(params, pub)
    return Init1(ciphers, nonce, pub, buf.pull_rest())  # the tail is skipped (§4.1)


def push_init1(msg: Init1) -> bytes:
    if not 1 <= len(msg.ciphers) <= 0xFF or len(msg.nonce) != N_A_LEN:
        raise ValueError("Init1 needs 1..255 ciphers and a 32-byte N_A")
    body = bytes([len(msg.ciphers)])
    body += b"".join(c.to_bytes(CIPHER_ID_LEN, "big") for c in msg.ciphers)
    body += msg.nonce + msg.pub + msg.ignored
    total = INIT_HEADER_LEN + len(body)
    return INIT1_MAGIC.to_bytes(MAGIC_LEN, "big") + total.to_bytes(MESSAGE_LEN_FIELD, "big") + body


def pull_init2(data: bytes, params: TepParams) -> Init2:
    """Parse one whole Init2; a sym_cipher outside Table 5 is refused here (§3.3, §7)."""
    buf = Buffer(data)
    _pull_header(buf, INIT2_MAGIC, len(data), init2_min_len(params))
    cipher = buf.pull_uint(CIPHER_ID_LEN)
    if cipher not in AEADS:
        raise CipherError(f"Init2 selects unknown cipher {cipher:#06x} (RFC 8548 §7)")
    nonce = buf.pull_bytes(N_B_LEN)
    pub = buf.pull_bytes(params.pub_len)
    _check_pub_encoding(params, pub)
    return Init2(cipher, nonce, pub, buf.pull_rest())


def push_init2(msg: Init2) -> bytes:
    if len(msg.nonce) != N_B_LEN:
        raise ValueError("Init2 needs a 32-byte N_B")
    body = msg.cipher.to_bytes(CIPHER_ID_LEN, "big") + msg.nonce + msg.pub + msg.ignored
    total = INIT_HEADER_LEN + len(body)
    return INIT2_MAGIC.to_bytes(MAGIC_LEN, "big") + total.to_bytes(MESSAGE_LEN_FIELD, "big") + body


# ---------------------------------------------------------------------------
# Plaintext and frames (RFC 8548 §3.6, §3.7, §4.2)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Plaintext:
    """The protected part of a frame: FINp, URGp and urgent offset, and the data (§4.2.1)."""

    data: bytes
    fin: bool = False
    urgent: int | None = None  # offset of the last urgent byte from the frame's first (§3.7)


def push_plaintext(pt: Plaintext) -> bytes:
    flags = (FLAG_FINP if pt.fin else 0) | (FLAG_URGP if pt.urgent is not None else 0)
    out = bytes([flags])  # fres sent as zero (§4.2.1)
    if pt.urgent is not None:
        if not 0 <= pt.urgent <= 0xFFFF:
            raise ValueError("urgent offset must fit in 16 bits (§4.2.1)")
        out += pt.urgent.to_bytes(URGENT_LEN, "big")
    return out + pt.data


def pull_plaintext(raw: bytes) -> Plaintext:
    buf = Buffer(raw)
    flags = buf.pull_uint(FLAGS_LEN)  # fres (bits 7..2) ignored on receipt (§4.2.1)
    urgent = buf.pull_uint(URGENT_LEN) if flags & FLAG_URGP else None
    return Plaintext(buf.pull_rest(), fin=bool(flags & FLAG_FINP), urgent=urgent)


@dataclass(frozen=True)
class Frame:
    """An encryption frame as sent: control byte and ciphertext with its tag (§4.2)."""

    control: int
    ciphertext: bytes

    @property
    def rekey(self) -> bool:
        return bool(self.control & CONTROL_REKEY)  # cres bits ignored (§4.2)

    @property
    def header(self) -> bytes:
        """control | clen: both the frame header and the associated data (§4.2.2)."""
        return bytes([self.control]) + len(self.ciphertext).to_bytes(2, "big")


def frame_length(prefix: bytes | bytearray) -> int | None:
    """Total length of the frame ``prefix`` starts with, once its header is there."""
    if len(prefix) < FRAME_HEADER_LEN:
        return None
    clen = int.from_bytes(prefix[1:FRAME_HEADER_LEN], "big")
    if clen < FLAGS_LEN + AEAD_TAG_LEN:
        # No AEAD of Table 3 can produce this; refuse before buffering anything (§4.2).
        raise BadLengthError(f"clen {clen} is shorter than flags + tag")
    return FRAME_HEADER_LEN + clen


def pull_frame(data: bytes) -> Frame:
    """Parse exactly one frame (header and ciphertext, nothing after)."""
    length = frame_length(data)
    if length is None or length != len(data):
        raise BadLengthError(f"frame of {len(data)} bytes does not match its clen")
    return Frame(data[0], bytes(data[FRAME_HEADER_LEN:]))


def push_frame(frame: Frame) -> bytes:
    if len(frame.ciphertext) > MAX_CLEN or not 0 <= frame.control <= 0xFF:
        raise ValueError("clen must be below 2^16 (RFC 8548 §3.6)")
    return frame.header + frame.ciphertext


def seal_frame(key: TrafficKey, offset: int, pt: Plaintext, rekey: bool = False) -> bytes:
    """Encrypt ``pt`` as the frame starting at stream ``offset`` (§3.6); returns its bytes."""
    plain = push_plaintext(pt)
    clen = len(plain) + AEAD_TAG_LEN
    if clen > MAX_CLEN:
        raise ValueError(f"chunk too large: clen {clen} >= 2^16 (RFC 8548 §3.6)")
    control = CONTROL_REKEY if rekey else 0  # cres sent as zero (§4.2)
    header = bytes([control]) + clen.to_bytes(2, "big")
    return header + key.seal(offset, plain, header)


def open_frame(key: TrafficKey, offset: int, frame: Frame) -> Plaintext:
    """Authenticate and decrypt; IntegrityError on FAIL, so no unauthenticated bytes (§3.6)."""
    plain = key.open(offset, frame.ciphertext, frame.header)
    try:
        return pull_plaintext(plain)
    except WireError as exc:  # authentic but malformed, e.g. URGp without its 2 bytes
        raise WireError(f"authenticated frame at offset {offset} is malformed: {exc}") from exc
