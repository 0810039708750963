"""tcpcrypt key agreement and key schedule (RFC 8548 §3.1, §3.3–§3.5, §3.8, §5).

Every derived value is recomputed here step by step from cryptography's own HKDF, HMAC,
X25519 and AEAD primitives, and compared with what the cores produce.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from testbed.teps.base import Role, TepContext
from testbed.teps.tcpcrypt.constants import TEPS, AeadId, TepId
from testbed.teps.tcpcrypt.core import TcpcryptCore
from testbed.teps.tcpcrypt.errors import BadLengthError, BadPublicKeyError
from testbed.teps.tcpcrypt.keys import (
    KeyChain,
    TrafficKey,
    cprf,
    derive_session,
    encode_nist_pubkey,
    extract,
    generate_ephemeral,
    key_agreement,
    master_key0,
    resume_half,
    resume_id,
)
from testbed.teps.tcpcrypt.loopback import DeterministicRandom, ScriptedRandom

# RFC 7748 §6.1 key pairs and shared secret.
PRIV_A = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
PRIV_B = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
N_A = bytes(range(0x00, 0x20))
N_B = bytes(range(0x20, 0x40))
TRANSCRIPT = bytes.fromhex("4504a3" "450323")  # any bytes: the cores only concatenate them


def expand(key: bytes, info: bytes, length: int) -> bytes:
    return HKDFExpand(hashes.SHA256(), length, info).derive(key)


def frame_nonce(offset: int, nr: bytes) -> bytes:
    """N = (zeros | 8-byte offset) XOR NR, written out independently of keys.py (§3.6)."""
    return bytes(x ^ y for x, y in zip(offset.to_bytes(len(nr), "big"), nr, strict=True))


def handshake(aead: int = AeadId.AES_128_GCM) -> tuple[TcpcryptCore, TcpcryptCore, bytes, bytes]:
    opts = {"tcpcrypt.ciphers": (aead,)}
    a = TcpcryptCore(
        TepContext(Role.A, TRANSCRIPT, ScriptedRandom([N_A, PRIV_A]), options=dict(opts)),
        TepId.X25519,
    )
    b = TcpcryptCore(
        TepContext(Role.B, TRANSCRIPT, ScriptedRandom([N_B, PRIV_B]), options=dict(opts)),
        TepId.X25519,
    )
    a.start(0.0)
    b.start(0.0)
    init1 = a.data_to_send()
    b.receive_data(init1, 0.0)
    init2 = b.data_to_send()
    a.receive_data(init2, 0.0)
    return a, b, init1, init2


# -- HKDF as RFC 8548 §3.1 Fig. 1 writes it ----------------------------------------------------


def test_cprf_is_hkdf_expand_and_fig1() -> None:
    key, const = bytes(range(32)), b"\x03\xaa\xbb"
    out = cprf(key, const, 44)
    assert out == expand(key, const, 44)
    t1 = hmac.HMAC(key, hashes.SHA256())
    t1.update(const + b"\x01")
    b1 = t1.finalize()
    t2 = hmac.HMAC(key, hashes.SHA256())
    t2.update(b1 + const + b"\x02")
    assert out == (b1 + t2.finalize())[:44]


def test_extract_is_hkdf_extract() -> None:
    assert extract(N_A, b"ikm") == HKDF.extract(hashes.SHA256(), N_A, b"ikm")


# -- the whole fresh schedule, step by step -----------------------------------------------------


def test_fresh_schedule_step_by_step() -> None:
    a, b, init1, init2 = handshake()
    es = x25519.X25519PrivateKey.from_private_bytes(PRIV_A).exchange(
        x25519.X25519PrivateKey.from_private_bytes(PRIV_B).public_key()
    )
    assert es == SHARED
    prk = HKDF.extract(hashes.SHA256(), N_A, TRANSCRIPT + init1 + init2 + es)  # §3.3
    sid = bytes([0x23]) + expand(prk, b"\x02", 32)  # §3.4, sn[0] empty
    assert a.session_id == b.session_id == sid
    mk0 = expand(prk, b"\x03", 32)
    k_ab = expand(mk0, b"\x04", 28)
    k_ba = expand(mk0, b"\x05", 28)
    # A sends with k_ab; its first frame starts right after Init1 in its stream (§3.6).
    a.send_data(b"ping")
    frame = a.data_to_send()
    nonce = frame_nonce(len(init1), k_ab[16:])
    assert AESGCM(k_ab[:16]).decrypt(nonce, frame[3:], frame[:3]) == b"\x00ping"
    b.send_data(b"pong")
    frame = b.data_to_send()
    nonce = frame_nonce(len(init2), k_ba[16:])
    assert AESGCM(k_ba[:16]).decrypt(nonce, frame[3:], frame[:3]) == b"\x00pong"


def test_rekey_uses_next_master_key() -> None:
    a, _, init1, init2 = handshake(AeadId.AES_256_GCM)
    prk = HKDF.extract(hashes.SHA256(), N_A, TRANSCRIPT + init1 + init2 + SHARED)
    mk1 = expand(expand(prk, b"\x03", 32), b"\x03", 32)  # mk[1] (§3.3, §3.8)
    k_ab1 = expand(mk1, b"\x04", 44)
    a.rekey()
    frame = a.data_to_send()
    assert frame[0] == 0x01  # rekey bit on the generation's first frame
    nonce = frame_nonce(len(init1), k_ab1[32:])
    assert AESGCM(k_ab1[:32]).decrypt(nonce, frame[3:], frame[:3]) == b"\x00"


def test_resumed_schedule_step_by_step() -> None:
    ss0 = bytes(range(32))
    ss1 = expand(ss0, b"\x01", 32)
    sn = b"\xaa" * 8 + b"\xbb" * 3  # nonce_a | nonce_b (§3.5)
    keys = derive_session(ss1, sn, AeadId.AES_128_GCM, 0x23 | 0x80, original_a=True)
    assert keys.session_id == b"\xa3" + expand(ss1, b"\x02" + sn, 32)
    assert keys.next_secret == expand(ss1, b"\x01", 32)
    mk0 = expand(ss1, b"\x03" + sn, 32)
    assert master_key0(ss1, sn) == mk0
    assert keys.send.key.key + keys.send.key.nr == expand(mk0, b"\x04", 28)
    assert keys.receive.key.key + keys.receive.key.nr == expand(mk0, b"\x05", 28)
    rid = expand(ss1, b"\x06", 18)
    assert resume_id(ss1) == rid
    assert resume_half(ss1, True) == rid[:9] and resume_half(ss1, False) == rid[9:]


def test_key_chain_generations() -> None:
    mk0 = bytes(32)
    chain = KeyChain(mk0, AeadId.CHACHA20_POLY1305, uses_ab=False)
    assert chain.generation == 0 and chain.key.key + chain.key.nr == expand(mk0, b"\x05", 44)
    chain.advance()
    chain.advance()
    mk2 = expand(expand(mk0, b"\x03", 32), b"\x03", 32)
    assert chain.generation == 2 and chain.key.key + chain.key.nr == expand(mk2, b"\x05", 44)


def test_traffic_key_split_fig4() -> None:
    key = TrafficKey(AeadId.AES_256_GCM, bytes(range(44)))
    assert key.key == bytes(range(32)) and key.nr == bytes(range(32, 44))
    with pytest.raises(ValueError):
        TrafficKey(AeadId.AES_256_GCM, bytes(28))


# -- key agreement (§5) ------------------------------------------------------------------------


@pytest.mark.parametrize("tep", list(TepId))
def test_key_agreement_agrees(tep: TepId) -> None:
    one = generate_ephemeral(tep, DeterministicRandom(b"one"))
    two = generate_ephemeral(tep, DeterministicRandom(b"two"))
    assert len(one.public) == TEPS[tep].pub_len
    secret = key_agreement(one, two.public)
    assert secret == key_agreement(two, one.public)
    assert len(secret) == TEPS[tep].secret_len
    again = generate_ephemeral(tep, DeterministicRandom(b"one"))
    assert again.public == one.public  # all randomness comes from the callable


def test_x25519_agreement_matches_rfc7748() -> None:
    own = generate_ephemeral(TepId.X25519, ScriptedRandom([PRIV_A]))
    peer = generate_ephemeral(TepId.X25519, ScriptedRandom([PRIV_B]))
    assert key_agreement(own, peer.public) == SHARED


@pytest.mark.parametrize("tep", [TepId.X25519, TepId.X448])
def test_all_zero_shared_secret_refused(tep: TepId) -> None:
    own = generate_ephemeral(tep, DeterministicRandom(b"k"))
    size = TEPS[tep].point_len
    for low_order in (bytes(size), b"\x01" + bytes(size - 1)):  # the points 0 and 1
        with pytest.raises(BadPublicKeyError):
            key_agreement(own, low_order)


def _off_curve_x() -> bytes:
    for x in range(1, 100):
        candidate = b"\x02" + x.to_bytes(32, "big")
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), candidate)
        except ValueError:
            return candidate
    raise AssertionError("no off-curve x below 100")


def test_nist_point_validation() -> None:
    own = generate_ephemeral(TepId.P256, DeterministicRandom(b"p"))
    with pytest.raises(BadPublicKeyError):
        key_agreement(own, encode_nist_pubkey(_off_curve_x()))
    with pytest.raises(BadPublicKeyError):  # x >= p is not a field element
        key_agreement(own, encode_nist_pubkey(b"\x03" + b"\xff" * 32))
    with pytest.raises(BadPublicKeyError):  # uncompressed prefix
        key_agreement(own, encode_nist_pubkey(b"\x04" + own.public[3:]))
    with pytest.raises(BadLengthError):
        key_agreement(own, own.public[:-1])
    with pytest.raises(BadLengthError):
        key_agreement(own, b"\x00\x22" + own.public[2:])
    p521 = generate_ephemeral(TepId.P521, DeterministicRandom(b"q"))
    with pytest.raises(BadPublicKeyError):
        key_agreement(p521, encode_nist_pubkey(b"\x02" + b"\xff" * 66))


def test_nist_scalar_is_reduced_into_range() -> None:
    # All-ones and all-zero seeds still give valid keys in [1, n-1].
    for seed in (b"\xff" * 40, bytes(40)):
        key = generate_ephemeral(TepId.P256, ScriptedRandom([seed]))
        assert isinstance(key.private, ec.EllipticCurvePrivateKey)
        assert key.private.private_numbers().private_value >= 1
    with pytest.raises(ValueError):
        generate_ephemeral(TepId.X25519, lambda n: b"short")
    with pytest.raises(ValueError):
        generate_ephemeral(0x30, DeterministicRandom(b"x"))
