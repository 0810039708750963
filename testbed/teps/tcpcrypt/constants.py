"""Every tcpcrypt constant, in one place, each with the RFC 8548 section that defines it.

Nothing else in the package spells a magic number, a length or an identifier.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# ---------------------------------------------------------------------------
# TEP identifiers (RFC 8548 §7 Table 4; requirement levels §5 Table 2)
# ---------------------------------------------------------------------------


class TepId(enum.IntEnum):
    """The four tcpcrypt TEP identifiers (7-bit ENO glt values, RFC 8547 §4.1)."""

    P256 = 0x21  # TCPCRYPT_ECDHE_P256, OPTIONAL
    P521 = 0x22  # TCPCRYPT_ECDHE_P521, OPTIONAL
    X25519 = 0x23  # TCPCRYPT_ECDHE_Curve25519, REQUIRED
    X448 = 0x24  # TCPCRYPT_ECDHE_Curve448, RECOMMENDED


# The ENO "v" bit in a TEP suboption byte (RFC 8547 §4.1 Fig. 4); a tcpcrypt session ID begins
# with the TEP byte as host B sent it, v bit included (RFC 8548 §3.4), so v = 1 when resumed.
ENO_V_BIT = 0x80


class Kex(enum.Enum):
    """Key-agreement families (RFC 8548 §5)."""

    NIST = "ecsvdp-dh"  # ECSVDP-DH (IEEE 1363) with compressed, length-prefixed points
    RFC7748 = "rfc7748"  # X25519 / X448, raw public keys, no length prefix


@dataclass(frozen=True)
class TepParams:
    """What a TEP id fixes (RFC 8548 §5): key agreement, lengths, CPRF (always HKDF-SHA256)."""

    tep_id: TepId
    name: str  # registry name used by this project
    kex: Kex
    point_len: int  # compressed point (NIST) or raw public key (RFC 7748), bytes
    private_len: int  # bytes of randomness drawn for a private key
    secret_len: int  # ES: X-coordinate (NIST) or X25519/X448 output (RFC 7748)

    @property
    def pub_len(self) -> int:
        """Length of Pub_A / Pub_B on the wire (§5: NIST points carry a 2-byte pubkey_len)."""
        return self.point_len + (PUBKEY_LEN_FIELD if self.kex is Kex.NIST else 0)


# §5: "prefixed by a two-byte length in big-endian format". The figure numbers the bytes 0..L-1
# with pubkey_len = L, so L counts the prefix itself (35 for P-256, 69 for P-521): we follow the
# figure, and the prose does not contradict it.
PUBKEY_LEN_FIELD = 2
# Private scalars for NIST curves are drawn with 8 spare bytes and reduced mod (n - 1), so the
# bias is below 2^-64 (a choice of this implementation; §5 only asks for ECSVDP-DH).
NIST_SCALAR_SLACK = 8

TEPS: dict[int, TepParams] = {
    TepId.P256: TepParams(TepId.P256, "tcpcrypt-p256", Kex.NIST, 33, 32 + NIST_SCALAR_SLACK, 32),
    TepId.P521: TepParams(TepId.P521, "tcpcrypt-p521", Kex.NIST, 67, 66 + NIST_SCALAR_SLACK, 66),
    TepId.X25519: TepParams(TepId.X25519, "tcpcrypt-x25519", Kex.RFC7748, 32, 32, 32),
    TepId.X448: TepParams(TepId.X448, "tcpcrypt-x448", Kex.RFC7748, 56, 56, 56),
}

# ---------------------------------------------------------------------------
# AEAD algorithms (RFC 8548 §6 Table 3, §7 Table 5)
# ---------------------------------------------------------------------------


class AeadId(enum.IntEnum):
    """Two-byte sym_cipher identifiers (RFC 8548 §7 Table 5)."""

    AES_128_GCM = 0x0001  # REQUIRED
    AES_256_GCM = 0x0002  # RECOMMENDED
    CHACHA20_POLY1305 = 0x0010  # RECOMMENDED


@dataclass(frozen=True)
class AeadParams:
    aead_id: AeadId
    key_len: int  # ae_key_len (§6 Table 3)
    nonce_len: int  # ae_nonce_len (§6 Table 3)


# The tag is 16 bytes for all three (RFC 5116 §5.1, §5.2; RFC 8439 §2.8).
AEAD_TAG_LEN = 16

AEADS: dict[int, AeadParams] = {
    AeadId.AES_128_GCM: AeadParams(AeadId.AES_128_GCM, 16, 12),
    AeadId.AES_256_GCM: AeadParams(AeadId.AES_256_GCM, 32, 12),
    AeadId.CHACHA20_POLY1305: AeadParams(AeadId.CHACHA20_POLY1305, 32, 12),
}

# A's default offer and B's default preference order (§3.3 asks for a per-connection setting,
# offered through TepContext.options, see core.py): the mandatory cipher first.
DEFAULT_AEADS: tuple[int, ...] = (
    AeadId.AES_128_GCM,
    AeadId.AES_256_GCM,
    AeadId.CHACHA20_POLY1305,
)

# ---------------------------------------------------------------------------
# Key-schedule constants and lengths (RFC 8548 §4.3 Table 1, §5)
# ---------------------------------------------------------------------------

CONST_NEXTK = b"\x01"
CONST_SESSID = b"\x02"
CONST_REKEY = b"\x03"
CONST_KEY_A = b"\x04"
CONST_KEY_B = b"\x05"
CONST_RESUME = b"\x06"

N_A_LEN = 32  # §5
N_B_LEN = 32  # §5
K_LEN = 32  # §5 (session secrets, master keys, session-ID body)

# ---------------------------------------------------------------------------
# Init1 / Init2 (RFC 8548 §4.1, magic numbers §4.3 Table 1)
# ---------------------------------------------------------------------------

INIT1_MAGIC = 0x15101A0E
INIT2_MAGIC = 0x097105E0
MAGIC_LEN = 4
MESSAGE_LEN_FIELD = 4
INIT_HEADER_LEN = MAGIC_LEN + MESSAGE_LEN_FIELD  # magic | message_len: enough to frame a message
NCIPHERS_FIELD = 1  # Init1 byte 8
CIPHER_ID_LEN = 2  # sym_cipher entries (§4.1, §7)
# Local policy, not the RFC: §4.1 makes receivers skip any "ignored" tail, but buffering an
# unbounded message would let a peer exhaust memory, so M above this is refused.
MAX_INIT_LEN = 1 << 16

# ---------------------------------------------------------------------------
# Encryption frames (RFC 8548 §3.6, §4.2)
# ---------------------------------------------------------------------------

FRAME_HEADER_LEN = 3  # control(1) | clen(2) (§4.2), also the associated data (§4.2.2)
MAX_CLEN = 0xFFFF  # §3.6: ciphertext length < 2^16
CONTROL_REKEY = 0x01  # control bit 0 (§4.2); bits 7..1 are cres, sent 0, ignored
FLAG_FINP = 0x01  # plaintext flags bit 0 (§4.2.1)
FLAG_URGP = 0x02  # plaintext flags bit 1 (§4.2.1); bits 7..2 are fres, sent 0, ignored
FLAGS_LEN = 1
URGENT_LEN = 2  # §4.2.1; byte order unstated, big-endian like every other field
FRAME_OFFSET_LEN = 8  # frame ID offset field (§4.2.3)
MAX_STREAM_OFFSET = 1 << 64  # §3.6: the 64-bit offset must not wrap under one key
# Largest application chunk per frame: clen = flags + data + tag <= MAX_CLEN (§3.6).
MAX_CHUNK = MAX_CLEN - AEAD_TAG_LEN - FLAGS_LEN
MAX_URGENT_CHUNK = MAX_CHUNK - URGENT_LEN

# ---------------------------------------------------------------------------
# Session resumption (RFC 8548 §3.5)
# ---------------------------------------------------------------------------

RESUME_ID_LEN = 18  # resume[i] = CPRF(ss[i], CONST_RESUME, 18)
RESUME_HALF_LEN = 9  # bytes {0..8} from original A, {9..17} from original B (Figs. 2, 3)
MAX_RESUME_NONCE_LEN = 8  # nonce is 0..8 bytes
DEFAULT_RESUME_NONCE_LEN = 8  # MUST default to 8 unless secret reuse is impossible

# ---------------------------------------------------------------------------
# Curve orders for drawing NIST private scalars (FIPS 186-4 App. D.1.2.3, D.1.2.5; RFC 8548 §5
# names the curves by reference to [NIST-DSS])
# ---------------------------------------------------------------------------

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
P521_ORDER = int(
    "01ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
    "fa51868783bf2f966b7fcc0148f709a5d03bb5c9b8899c47aebb6fb71e91386409",
    16,
)
