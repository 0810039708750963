"""tcpcrypt wire formats (RFC 8548 §4.1, §4.2): byte vectors both ways and strict parsing."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from testbed.teps.base import IntegrityError, RemoteProtocolError
from testbed.teps.tcpcrypt.constants import MAX_CHUNK, MAX_INIT_LEN, TEPS, AeadId, TepId
from testbed.teps.tcpcrypt.errors import (
    BadLengthError,
    BadMagicError,
    BadPublicKeyError,
    CipherError,
    WireError,
)
from testbed.teps.tcpcrypt.keys import TrafficKey
from testbed.teps.tcpcrypt.wire import (
    Frame,
    Init1,
    Init2,
    Plaintext,
    frame_length,
    init1_min_len,
    init2_min_len,
    init_length,
    open_frame,
    pull_frame,
    pull_init1,
    pull_init2,
    pull_plaintext,
    push_frame,
    push_init1,
    push_init2,
    push_plaintext,
    seal_frame,
)

X25519 = TEPS[TepId.X25519]
P256 = TEPS[TepId.P256]
N_A = bytes(range(0x00, 0x20))
N_B = bytes(range(0x20, 0x40))
# RFC 7748 §6.1 public keys, used as Pub_A and Pub_B.
PUB_A = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
PUB_B = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")

INIT1_X25519 = bytes.fromhex(
    "15101a0e"  # INIT1_MAGIC (§4.3)
    "0000004f"  # message_len = 79
    "03"  # nciphers
    "0001" "0002" "0010"  # AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305 (§7 Table 5)
) + N_A + PUB_A
INIT2_X25519 = bytes.fromhex(
    "097105e0"  # INIT2_MAGIC (§4.3)
    "0000004a"  # message_len = 74
    "0002"  # sym_cipher = AES-256-GCM
) + N_B + PUB_B


def p256_pub(scalar: int = 7) -> bytes:
    point = ec.derive_private_key(scalar, ec.SECP256R1()).public_key()
    return b"\x00\x23" + point.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)


# -- Init1 / Init2 vectors -----------------------------------------------------------------


def test_init1_vector_push_and_pull() -> None:
    msg = Init1((0x0001, 0x0002, 0x0010), N_A, PUB_A)
    assert push_init1(msg) == INIT1_X25519
    assert pull_init1(INIT1_X25519, X25519) == msg


def test_init2_vector_push_and_pull() -> None:
    msg = Init2(AeadId.AES_256_GCM, N_B, PUB_B)
    assert push_init2(msg) == INIT2_X25519
    assert pull_init2(INIT2_X25519, X25519) == msg


def test_init1_p256_vector_has_length_prefixed_compressed_point() -> None:
    pub = p256_pub()
    assert len(pub) == 35 and pub[:2] == b"\x00\x23" and pub[2] in (2, 3)
    raw = push_init1(Init1((0x0001,), N_A, pub))
    expected = bytes.fromhex("15101a0e" "0000004e" "01" "0001") + N_A + pub
    assert raw == expected
    assert pull_init1(raw, P256).pub == pub


@pytest.mark.parametrize(
    ("tep", "init1_len", "init2_len"),
    [(TepId.X25519, 75, 74), (TepId.X448, 99, 98), (TepId.P256, 78, 77), (TepId.P521, 112, 111)],
)
def test_minimum_message_sizes(tep: TepId, init1_len: int, init2_len: int) -> None:
    assert init1_min_len(TEPS[tep]) == init1_len
    assert init2_min_len(TEPS[tep]) == init2_len


def test_ignored_tail_is_accepted_and_kept_apart() -> None:
    # §4.1: bytes after Pub MUST be accepted and ignored when received.
    msg = Init1((0x0001,), N_A, PUB_A, ignored=b"future")
    raw = push_init1(msg)
    assert raw[4:8] == (75 + 6).to_bytes(4, "big")
    parsed = pull_init1(raw, X25519)
    assert parsed.ignored == b"future" and parsed.pub == PUB_A
    raw2 = push_init2(Init2(1, N_B, PUB_B, ignored=b"\x00" * 3))
    assert pull_init2(raw2, X25519).ignored == b"\x00" * 3


def test_unknown_cipher_ids_in_init1_are_kept() -> None:
    raw = push_init1(Init1((0x7777, 0x0001), N_A, PUB_A))
    assert pull_init1(raw, X25519).ciphers == (0x7777, 0x0001)


# -- Init validation -------------------------------------------------------------------------


def test_bad_magic() -> None:
    with pytest.raises(BadMagicError):
        pull_init1(b"\x15\x10\x1a\x0f" + INIT1_X25519[4:], X25519)
    with pytest.raises(BadMagicError):
        pull_init2(INIT1_X25519, X25519)
    with pytest.raises(BadMagicError):
        pull_init1(INIT2_X25519, X25519)


def test_init_length_fails_on_first_wrong_magic_byte() -> None:
    with pytest.raises(BadMagicError):
        init_length(b"\x16", 0x15101A0E, 75)
    assert init_length(b"\x15\x10", 0x15101A0E, 75) is None
    assert init_length(INIT1_X25519[:7], 0x15101A0E, 75) is None
    assert init_length(INIT1_X25519[:8], 0x15101A0E, 75) == 79


@pytest.mark.parametrize("length", [0, 8, 74, MAX_INIT_LEN + 1, 0xFFFFFFFF])
def test_init_length_refuses_impossible_message_len(length: int) -> None:
    header = bytes.fromhex("15101a0e") + length.to_bytes(4, "big")
    with pytest.raises(BadLengthError):
        init_length(header, 0x15101A0E, 75)


def test_message_len_must_match() -> None:
    with pytest.raises(BadLengthError):
        pull_init1(INIT1_X25519[:-1], X25519)  # one byte short of message_len
    with pytest.raises(BadLengthError):
        pull_init1(INIT1_X25519 + b"\x00", X25519)  # a byte beyond message_len
    short = bytearray(INIT2_X25519)
    short[4:8] = (73).to_bytes(4, "big")
    with pytest.raises(BadLengthError):
        pull_init2(bytes(short[:73]), X25519)


def test_nciphers_zero_and_overlong_cipher_list() -> None:
    zero = bytes.fromhex("15101a0e" "0000004b" "00") + b"\x00" * 2 + N_A + PUB_A
    with pytest.raises(CipherError):
        pull_init1(zero, X25519)
    # nciphers claims more ids than the message holds: N_A/Pub_A run out.
    big = bytearray(INIT1_X25519)
    big[8] = 40
    with pytest.raises(BadLengthError):
        pull_init1(bytes(big), X25519)


def test_init2_unknown_cipher() -> None:
    raw = bytearray(INIT2_X25519)
    raw[8:10] = b"\x00\x03"
    with pytest.raises(CipherError):
        pull_init2(bytes(raw), X25519)


def test_nist_pubkey_encoding_checks() -> None:
    pub = p256_pub()
    wrong_len = b"\x00\x21" + pub[2:]  # the prose's reading (point only) is refused
    with pytest.raises(BadLengthError):
        pull_init1(push_init1(Init1((1,), N_A, wrong_len)), P256)
    uncompressed = pub[:2] + b"\x04" + pub[3:]
    with pytest.raises(BadPublicKeyError):
        pull_init1(push_init1(Init1((1,), N_A, uncompressed)), P256)
    with pytest.raises(BadPublicKeyError):
        pull_init2(push_init2(Init2(1, N_B, uncompressed)), P256)


def test_push_refuses_bad_messages() -> None:
    with pytest.raises(ValueError):
        push_init1(Init1((), N_A, PUB_A))
    with pytest.raises(ValueError):
        push_init1(Init1((1,), N_A[:31], PUB_A))
    with pytest.raises(ValueError):
        push_init2(Init2(1, N_B + b"x", PUB_B))


# -- Frames ------------------------------------------------------------------------------------

AES_KEY = TrafficKey(AeadId.AES_128_GCM, bytes(range(28)))  # K = 00..0f, NR = 10..1b
FRAME_HELLO = bytes.fromhex("000016db655141cd761388992167e84efdf0b05b29ee2288fd")
FRAME_URG_FIN_REKEY = bytes.fromhex("01001ad80d3058d37e27ecdb4d08fd0b058bf2718dac4e5964bbbb38ac")
CHACHA_KEY = TrafficKey(AeadId.CHACHA20_POLY1305, bytes(range(44)))
FRAME_CHACHA_EMPTY = bytes.fromhex("000011d51c65e468174a5ce7a0f48fe30c74062e")


def test_frame_nonce_is_offset_xor_nr() -> None:
    # frame_ID = 4 zero bytes | offset 75 as 8 bytes; XOR NR = 10..1b (§3.6, §4.2.3).
    assert AES_KEY.nonce(75).hex() == "101112131415161718191a50"
    assert AES_KEY.nonce(0) == AES_KEY.nr
    with pytest.raises(ValueError):
        AES_KEY.nonce(1 << 64)


def test_frame_vector_seal() -> None:
    assert seal_frame(AES_KEY, 75, Plaintext(b"hello")) == FRAME_HELLO
    urg = seal_frame(AES_KEY, 75, Plaintext(b"urgent!", fin=True, urgent=4), rekey=True)
    assert urg == FRAME_URG_FIN_REKEY
    assert seal_frame(CHACHA_KEY, 1 << 40, Plaintext(b"")) == FRAME_CHACHA_EMPTY


def test_frame_vector_matches_raw_aead() -> None:
    # Independent of our code: AD = control | clen, plaintext = flags | data (§4.2).
    header = bytes.fromhex("000016")
    ct = AESGCM(bytes(range(16))).encrypt(
        bytes.fromhex("101112131415161718191a50"), b"\x00hello", header
    )
    assert header + ct == FRAME_HELLO
    plain = bytes.fromhex("03" "0004") + b"urgent!"
    assert AESGCM(bytes(range(16))).decrypt(
        bytes.fromhex("101112131415161718191a50"), FRAME_URG_FIN_REKEY[3:], FRAME_URG_FIN_REKEY[:3]
    ) == plain
    nonce = bytes(
        a ^ b for a, b in zip((1 << 40).to_bytes(12, "big"), bytes(range(32, 44)), strict=True)
    )
    assert ChaCha20Poly1305(bytes(range(32))).decrypt(
        nonce, FRAME_CHACHA_EMPTY[3:], FRAME_CHACHA_EMPTY[:3]
    ) == b"\x00"


def test_frame_vector_open() -> None:
    frame = pull_frame(FRAME_HELLO)
    assert frame == Frame(0, FRAME_HELLO[3:]) and not frame.rekey
    assert open_frame(AES_KEY, 75, frame) == Plaintext(b"hello")
    frame = pull_frame(FRAME_URG_FIN_REKEY)
    assert frame.rekey
    assert open_frame(AES_KEY, 75, frame) == Plaintext(b"urgent!", fin=True, urgent=4)
    assert push_frame(frame) == FRAME_URG_FIN_REKEY
    assert open_frame(CHACHA_KEY, 1 << 40, pull_frame(FRAME_CHACHA_EMPTY)) == Plaintext(b"")


def test_reserved_bits_are_ignored_but_authenticated() -> None:
    # cres: a frame sent with control 0xfe|0 opens (bits ignored), since AD carries it (§4.2).
    plain = push_plaintext(Plaintext(b"x"))
    header = bytes([0xFE]) + (len(plain) + 16).to_bytes(2, "big")
    raw = header + AES_KEY.seal(9, plain, header)
    frame = pull_frame(raw)
    assert not frame.rekey and open_frame(AES_KEY, 9, frame) == Plaintext(b"x")
    # fres: flags 0xfc carry neither FINp nor URGp (§4.2.1).
    assert pull_plaintext(b"\xfcabc") == Plaintext(b"abc")
    # Rewriting the control byte on the path breaks the tag.
    tampered = Frame(0x00, frame.ciphertext)
    with pytest.raises(IntegrityError):
        open_frame(AES_KEY, 9, tampered)


def test_frame_wrong_offset_key_or_bytes_fail() -> None:
    frame = pull_frame(FRAME_HELLO)
    with pytest.raises(IntegrityError):
        open_frame(AES_KEY, 76, frame)
    with pytest.raises(IntegrityError):
        open_frame(TrafficKey(AeadId.AES_128_GCM, bytes(28)), 75, frame)
    flipped = bytearray(FRAME_HELLO)
    flipped[-1] ^= 1
    with pytest.raises(IntegrityError):
        open_frame(AES_KEY, 75, pull_frame(bytes(flipped)))


def test_frame_length_and_pull_frame_checks() -> None:
    assert frame_length(b"\x00\x00") is None
    assert frame_length(FRAME_HELLO[:3]) == len(FRAME_HELLO)
    with pytest.raises(BadLengthError):
        frame_length(b"\x00\x00\x10")  # clen 16 < flags + tag
    with pytest.raises(BadLengthError):
        pull_frame(FRAME_HELLO[:-1])
    with pytest.raises(BadLengthError):
        pull_frame(FRAME_HELLO + b"\x00")


def test_urgp_without_urgent_field_is_malformed() -> None:
    with pytest.raises(WireError):
        pull_plaintext(b"\x02\x00")
    header = bytes.fromhex("000012")
    raw = header + AES_KEY.seal(0, b"\x02\x00", header)
    with pytest.raises(WireError) as info:
        open_frame(AES_KEY, 0, pull_frame(raw))
    assert not isinstance(info.value, IntegrityError)
    assert isinstance(info.value, RemoteProtocolError)


def test_largest_chunk_fits_and_one_more_does_not() -> None:
    raw = seal_frame(AES_KEY, 0, Plaintext(bytes(MAX_CHUNK)))
    assert len(raw) == 3 + 0xFFFF
    with pytest.raises(ValueError):
        seal_frame(AES_KEY, 0, Plaintext(bytes(MAX_CHUNK + 1)))
    with pytest.raises(ValueError):
        seal_frame(AES_KEY, 0, Plaintext(bytes(MAX_CHUNK - 1), urgent=0))
    with pytest.raises(ValueError):
        push_frame(Frame(0, bytes(0x10000)))
