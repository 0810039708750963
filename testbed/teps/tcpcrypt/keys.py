"""tcpcrypt key agreement and key schedule (RFC 8548 §3.1, §3.3–§3.6, §3.8, §5).

Key schedule, as the RFC writes it::

    ES       = key-agreement(own private key, peer's Pub)                       §3.3, §5
    PRK      = Extract(N_A, eno_transcript | Init1 | Init2 | ES)                 §3.3
    ss[0]    = PRK;  ss[i] = CPRF(ss[i-1], CONST_NEXTK, K_LEN)                   §3.3
    mk[0]    = CPRF(ss[i], CONST_REKEY | sn[i], K_LEN);  mk[j] = CPRF(mk[j-1], CONST_REKEY, K_LEN)
    k_ab[j]  = CPRF(mk[j], CONST_KEY_A, ae_key_len + ae_nonce_len)               (k_ba: CONST_KEY_B)
    sid[i]   = TEP-byte | CPRF(ss[i], CONST_SESSID | sn[i], K_LEN)               §3.4
    resume[i]= CPRF(ss[i], CONST_RESUME, 18)                                     §3.5

Extract is HKDF-Extract and CPRF is HKDF-Expand, both over SHA-256 for all four TEPs (§3.1, §5).
Randomness only comes from the ``random`` callable the caller passes (TepContext.random).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric import ec, x448, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from testbed.teps.base import IntegrityError

from .constants import (
    AEADS,
    CONST_KEY_A,
    CONST_KEY_B,
    CONST_NEXTK,
    CONST_REKEY,
    CONST_RESUME,
    CONST_SESSID,
    FRAME_OFFSET_LEN,
    K_LEN,
    MAX_STREAM_OFFSET,
    P256_ORDER,
    P521_ORDER,
    PUBKEY_LEN_FIELD,
    RESUME_HALF_LEN,
    RESUME_ID_LEN,
    TEPS,
    AeadId,
    AeadParams,
    Kex,
    TepId,
    TepParams,
)
from .errors import BadLengthError, BadPublicKeyError, CipherError

Random = Callable[[int], bytes]
_PrivateKey = x25519.X25519PrivateKey | x448.X448PrivateKey | ec.EllipticCurvePrivateKey

# ---------------------------------------------------------------------------
# HKDF (RFC 8548 §3.1 Fig. 1, RFC 5869 §2)
# ---------------------------------------------------------------------------


def extract(salt: bytes, ikm: bytes) -> bytes:
    """Extract(S, IKM) = HMAC-SHA256(S, IKM) (RFC 5869 §2.2)."""
    mac = hmac.HMAC(salt, hashes.SHA256())
    mac.update(ikm)
    return mac.finalize()


def cprf(key: bytes, const: bytes, length: int) -> bytes:
    """CPRF(K, CONST, L): the first L bytes of HKDF-Expand-SHA256 with info = CONST (§3.1)."""
    return HKDFExpand(hashes.SHA256(), length, const).derive(key)


# ---------------------------------------------------------------------------
# Key agreement (RFC 8548 §5)
# ---------------------------------------------------------------------------

_NIST_CURVES: dict[int, tuple[ec.EllipticCurve, int]] = {
    TepId.P256: (ec.SECP256R1(), P256_ORDER),
    TepId.P521: (ec.SECP521R1(), P521_ORDER),
}


@dataclass(frozen=True)
class EphemeralKey:
    """A short-lived key pair (§3.3); ``public`` is Pub as it goes on the wire (§4.1, §5)."""

    params: TepParams
    private: _PrivateKey
    public: bytes


def tep_params(tep_id: int) -> TepParams:
    try:
        return TEPS[tep_id]
    except KeyError:
        raise ValueError(f"{tep_id:#x} is not a tcpcrypt TEP id (RFC 8548 §7)") from None


def generate_ephemeral(tep_id: int, random: Random) -> EphemeralKey:
    """Make a fresh key pair from ``random(params.private_len)`` (one call)."""
    params = tep_params(tep_id)
    seed = random(params.private_len)
    if len(seed) != params.private_len:
        raise ValueError("random() returned the wrong number of bytes")
    private: _PrivateKey
    if params.tep_id == TepId.X25519:
        private = x25519.X25519PrivateKey.from_private_bytes(seed)
        public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    elif params.tep_id == TepId.X448:
        private = x448.X448PrivateKey.from_private_bytes(seed)
        public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    else:
        curve, order = _NIST_CURVES[params.tep_id]
        scalar = int.from_bytes(seed, "big") % (order - 1) + 1  # in [1, n-1]
        private = ec.derive_private_key(scalar, curve)
        point = private.public_key().public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
        public = encode_nist_pubkey(point)
    return EphemeralKey(params, private, public)


def encode_nist_pubkey(point: bytes) -> bytes:
    """pubkey_len (2 bytes, counting itself, per the §5 figure) | compressed point."""
    return (len(point) + PUBKEY_LEN_FIELD).to_bytes(PUBKEY_LEN_FIELD, "big") + point


def _load_nist_pubkey(params: TepParams, pub: bytes) -> ec.EllipticCurvePublicKey:
    """Decode and validate a NIST public key (§5: compressed, IEEE 1363 A.16.10)."""
    declared = int.from_bytes(pub[:PUBKEY_LEN_FIELD], "big")
    if len(pub) != params.pub_len or declared != params.pub_len:
        raise BadLengthError(f"pubkey_len {declared}, expected {params.pub_len} (RFC 8548 §5)")
    point = pub[PUBKEY_LEN_FIELD:]
    if point[0] not in (0x02, 0x03):  # §5: MUST be in compressed format
        raise BadPublicKeyError("public key is not a compressed point (RFC 8548 §5)")
    curve, _ = _NIST_CURVES[params.tep_id]
    try:
        # OpenSSL checks that x is a field element and the point is on the curve; both curves
        # have cofactor 1, so that is the whole of the A.16.10 validation.
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    except ValueError as exc:
        raise BadPublicKeyError(f"invalid {params.name} public key: {exc}") from exc


def key_agreement(own: EphemeralKey, peer_pub: bytes) -> bytes:
    """ES = key-agreement(own private key, peer's Pub) (§3.3); aborts on bad keys (§5)."""
    params = own.params
    if len(peer_pub) != params.pub_len:
        raise BadLengthError(f"public key of {len(peer_pub)} bytes, expected {params.pub_len}")
    try:
        if isinstance(own.private, x25519.X25519PrivateKey):
            secret = own.private.exchange(x25519.X25519PublicKey.from_public_bytes(peer_pub))
        elif isinstance(own.private, x448.X448PrivateKey):
            secret = own.private.exchange(x448.X448PublicKey.from_public_bytes(peer_pub))
        else:
            peer = _load_nist_pubkey(params, peer_pub)
            secret = own.private.exchange(ec.ECDH(), peer)
    except ValueError as exc:
        # OpenSSL refuses an all-zero X25519/X448 result itself (RFC 7748 §6).
        raise BadPublicKeyError(f"{params.name} key agreement failed: {exc}") from exc
    if params.kex is Kex.RFC7748 and not any(secret):
        raise BadPublicKeyError("all-zero shared secret (RFC 8548 §5, RFC 7748 §6)")
    return secret


# ---------------------------------------------------------------------------
# Traffic keys and AEAD (RFC 8548 §3.6 Fig. 4, §4.2.3)
# ---------------------------------------------------------------------------


class TrafficKey:
    """k_ab[j] or k_ba[j] split into the AEAD key K and the nonce randomizer NR (§3.6)."""

    __slots__ = ("aead_id", "key", "nr", "_aead")

    def __init__(self, aead_id: int, material: bytes) -> None:
        params = aead_params(aead_id)
        if len(material) != params.key_len + params.nonce_len:
            raise ValueError("traffic key has the wrong length for its AEAD")
        self.aead_id = params.aead_id
        self.key = material[: params.key_len]
        self.nr = material[params.key_len :]
        self._aead: AESGCM | ChaCha20Poly1305 = (
            ChaCha20Poly1305(self.key)
            if params.aead_id == AeadId.CHACHA20_POLY1305
            else AESGCM(self.key)
        )

    def nonce(self, offset: int) -> bytes:
        """N = frame_ID XOR NR, frame_ID = zeros | offset (8 bytes BE) (§3.6, §4.2.3)."""
        if not 0 <= offset < MAX_STREAM_OFFSET:
            raise ValueError("stream offset outside the 64-bit frame ID (RFC 8548 §3.6)")
        frame_id = offset.to_bytes(FRAME_OFFSET_LEN, "big").rjust(len(self.nr), b"\x00")
        return bytes(a ^ b for a, b in zip(frame_id, self.nr, strict=True))

    def seal(self, offset: int, plaintext: bytes, associated: bytes) -> bytes:
        return self._aead.encrypt(self.nonce(offset), plaintext, associated)

    def open(self, offset: int, ciphertext: bytes, associated: bytes) -> bytes:
        """Decrypt or raise IntegrityError: FAIL yields no plaintext (§3.6)."""
        try:
            return self._aead.decrypt(self.nonce(offset), ciphertext, associated)
        except InvalidTag:
            raise IntegrityError(f"frame at offset {offset} failed authentication") from None


def aead_params(aead_id: int) -> AeadParams:
    try:
        return AEADS[aead_id]
    except KeyError:
        raise CipherError(f"unknown AEAD {aead_id:#06x} (RFC 8548 §7 Table 5)") from None


# ---------------------------------------------------------------------------
# Session secrets, master keys, generations (RFC 8548 §3.3–§3.5, §3.8)
# ---------------------------------------------------------------------------


def prk(transcript: bytes, init1: bytes, init2: bytes, es: bytes, n_a: bytes) -> bytes:
    """PRK = ss[0] = Extract(N_A, eno_transcript | Init1 | Init2 | ES) (§3.3)."""
    return extract(n_a, transcript + init1 + init2 + es)


def next_secret(ss: bytes) -> bytes:
    """ss[i] = CPRF(ss[i-1], CONST_NEXTK, K_LEN) (§3.3)."""
    return cprf(ss, CONST_NEXTK, K_LEN)


def master_key0(ss: bytes, sn: bytes) -> bytes:
    """mk[0] = CPRF(ss[i], CONST_REKEY | sn[i], K_LEN) (§3.3)."""
    return cprf(ss, CONST_REKEY + sn, K_LEN)


def next_master(mk: bytes) -> bytes:
    """mk[j] = CPRF(mk[j-1], CONST_REKEY, K_LEN) (§3.3, §3.8)."""
    return cprf(mk, CONST_REKEY, K_LEN)


def traffic_keys(mk: bytes, aead_id: int) -> tuple[TrafficKey, TrafficKey]:
    """(k_ab[j], k_ba[j]) from mk[j] (§3.3)."""
    params = aead_params(aead_id)
    length = params.key_len + params.nonce_len
    return (
        TrafficKey(aead_id, cprf(mk, CONST_KEY_A, length)),
        TrafficKey(aead_id, cprf(mk, CONST_KEY_B, length)),
    )


def session_id(tep_byte: int, ss: bytes, sn: bytes) -> bytes:
    """session_id[i] = TEP-byte | CPRF(ss[i], CONST_SESSID | sn[i], K_LEN) (§3.4)."""
    return bytes([tep_byte]) + cprf(ss, CONST_SESSID + sn, K_LEN)


def resume_id(ss: bytes) -> bytes:
    """resume[i] = CPRF(ss[i], CONST_RESUME, 18) (§3.5)."""
    return cprf(ss, CONST_RESUME, RESUME_ID_LEN)


def resume_half(ss: bytes, original_a: bool) -> bytes:
    """The half a host names ss[i] with: {0..8} if it was A for ss[0], else {9..17} (§3.5)."""
    rid = resume_id(ss)
    return rid[:RESUME_HALF_LEN] if original_a else rid[RESUME_HALF_LEN:]


class KeyChain:
    """One direction's walk along mk[j] (§3.8): only the current generation is kept.

    ``uses_ab`` says which traffic key of each generation this direction uses: a host that
    was A when ss[0] was made sends with k_ab[j] in every session from that ss[0] (§3.3, §3.5).
    """

    __slots__ = ("generation", "_mk", "_aead_id", "_uses_ab", "key")

    def __init__(self, mk0: bytes, aead_id: int, uses_ab: bool) -> None:
        self.generation = 0
        self._mk = mk0
        self._aead_id = aead_id
        self._uses_ab = uses_ab
        self.key = self._derive()

    def _derive(self) -> TrafficKey:
        k_ab, k_ba = traffic_keys(self._mk, self._aead_id)
        return k_ab if self._uses_ab else k_ba

    def advance(self) -> None:
        """Move to generation j+1; mk[j] and its keys are dropped (§3.8 SHOULD erase)."""
        self._mk = next_master(self._mk)
        self.generation += 1
        self.key = self._derive()


@dataclass(frozen=True)
class SessionKeys:
    """Everything one connection derives from ss[i] and sn[i] (§3.3–§3.5)."""

    session_id: bytes
    send: KeyChain
    receive: KeyChain
    next_secret: bytes  # ss[i+1], for the resumption cache (§3.5)


def derive_session(
    ss: bytes, sn: bytes, aead_id: int, tep_byte: int, original_a: bool
) -> SessionKeys:
    """Keys for a session on ss[i]; ``original_a``: this host was A when ss[0] was made."""
    mk0 = master_key0(ss, sn)
    return SessionKeys(
        session_id=session_id(tep_byte, ss, sn),
        send=KeyChain(mk0, aead_id, uses_ab=original_a),
        receive=KeyChain(mk0, aead_id, uses_ab=not original_a),
        next_secret=next_secret(ss),
    )
