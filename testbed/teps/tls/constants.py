"""Every constant of the TLS TEP in one place (wire values, labels, profile choices).

The profile follows draft-ietf-tcpinc-use-tls-00 (ENO role A is the TLS client, TLS 1.3,
P-256/X25519, AES-GCM and ChaCha20-Poly1305, an ECDSA or Ed25519 server key, no certificate
validation by default). That draft never became an RFC and IANA never assigned the TEP id, so
0x30 is *non-standard* (the value draft-era implementations used).

The session ID rule is the one place where the ENO transcript enters the TLS engine:

    session_id = TEP_BYTE || TLS-Exporter(EXPORTER_LABEL, exporter_context(transcript), 32)

TLS-Exporter is RFC 8446 §7.5 (RFC 5705 interface). RFC 8547 §5.1 asks for a TEP byte followed
by a collision-resistant hash of the connection data that depends on the transcript, at least
33 bytes in all: the exporter output depends on the whole TLS handshake transcript (both randoms
and key shares) and on the context, which carries the ENO transcript. use-tls-00 instead put the
transcript in a ClientHello extension that never got a codepoint; the exporter context replaces
it (see the spec digest, section 3.5).
"""

from __future__ import annotations

from typing import Final

# --- ENO binding ---------------------------------------------------------------------------

TEP_ID: Final = 0x30  # non-standard: no IANA assignment exists for TCP-use-TLS
TEP_NAME: Final = "tls"
TEP_LABEL: Final = "non-standard TEP id"
# RFC 8547 §5.1: byte 0 of the session ID is the TEP suboption byte as B sent it (v bit = 0 here).
TEP_BYTE: Final = bytes([TEP_ID])

# RFC 5705 §4: labels starting with "EXPORTER" are free for private use without registration.
EXPORTER_LABEL: Final = b"EXPORTER-tcpinc-use-tls-session-id"
EXPORTER_LENGTH: Final = 32  # 1 + 32 = 33 bytes, the RFC 8547 §5.1 minimum
# Distinguishes "ENO transcript follows" from plain-TLS mode, where there is no transcript.
_ENO_CONTEXT_PREFIX: Final = b"tcpinc-eno-transcript:"


def exporter_context(transcript: bytes | None) -> bytes:
    """Exporter context for the session ID: the ENO transcript, or empty in plain-TLS mode.

    RFC 8446 §7.5 hashes the context, so any length is fine. In TLS 1.3 an empty context and no
    context give the same output (unlike RFC 5705 §4 for TLS 1.2), so plain mode passes b"".
    """
    if transcript is None:
        return b""
    return _ENO_CONTEXT_PREFIX + transcript


def session_id_from_exporter(exporter_output: bytes) -> bytes:
    if len(exporter_output) != EXPORTER_LENGTH:
        raise ValueError(f"exporter gave {len(exporter_output)} bytes, want {EXPORTER_LENGTH}")
    return TEP_BYTE + exporter_output


# --- TLS profile -------------------------------------------------------------------------------

# RFC 8446 §9.1: TLS_AES_128_GCM_SHA256 is mandatory; the other two are SHOULD.
CIPHERSUITES: Final = (
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
)
# RFC 8446 §4.2.7 names; OpenSSL spells secp256r1 "P-256". Order = client preference.
GROUPS: Final = ("X25519", "P-256")
# Signature schemes the client accepts for CertificateVerify (RFC 8446 §4.2.3).
SIGALGS: Final = "ecdsa_secp256r1_sha256:ed25519"
KEY_TYPES: Final = ("ecdsa-p256", "ed25519")

# Upper bound for the early data a ticket from this engine allows (RFC 8446 §4.6.1
# max_early_data_size); 16384 is one full record.
DEFAULT_MAX_EARLY_DATA: Final = 16384

# --- OpenSSL values the cffi binding does not export -------------------------------------------

# openssl/ssl.h: SSL_OP_ENABLE_MIDDLEBOX_COMPAT is SSL_OP_BIT(20) (RFC 8446 §D.4 behaviour).
OP_ENABLE_MIDDLEBOX_COMPAT: Final = 1 << 20
# openssl/ssl.h: SSL_READ_EARLY_DATA_{ERROR,SUCCESS,FINISH}.
READ_EARLY_DATA_ERROR: Final = 0
READ_EARLY_DATA_SUCCESS: Final = 1
READ_EARLY_DATA_FINISH: Final = 2

# --- Wire values observed through the message callback ---------------------------------------

# RFC 8446 §5.1 ContentType.
CONTENT_ALERT: Final = 21
CONTENT_HANDSHAKE: Final = 22
# RFC 8446 §4 HandshakeType values the engine reacts to.
HS_NEW_SESSION_TICKET: Final = 4
HS_END_OF_EARLY_DATA: Final = 5

# RFC 8446 §6 AlertDescription.
ALERT_NAMES: Final[dict[int, str]] = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    22: "record_overflow",
    40: "handshake_failure",
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    46: "certificate_unknown",
    47: "illegal_parameter",
    48: "unknown_ca",
    49: "access_denied",
    50: "decode_error",
    51: "decrypt_error",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    86: "inappropriate_fallback",
    90: "user_canceled",
    109: "missing_extension",
    110: "unsupported_extension",
    112: "unrecognized_name",
    113: "bad_certificate_status_response",
    115: "unknown_psk_identity",
    116: "certificate_required",
    120: "no_application_protocol",
}
ALERT_CLOSE_NOTIFY: Final = 0
ALERT_BAD_RECORD_MAC: Final = 20
ALERT_DECRYPT_ERROR: Final = 51
# Alerts that mean "bytes did not authenticate" (RFC 8446 §5.2 record tag, §4.4.3/§4.4.4
# signature or Finished MAC): these become IntegrityError, whichever end detected them.
INTEGRITY_ALERTS: Final = frozenset({ALERT_BAD_RECORD_MAC, ALERT_DECRYPT_ERROR})


def alert_name(code: int) -> str:
    return f"{ALERT_NAMES.get(code, 'unknown_alert')}({code})"
