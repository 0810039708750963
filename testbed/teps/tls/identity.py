"""Server identities and client contexts: the long-lived OpenSSL objects behind the cores.

A ``ServerIdentity`` is one host's server key (ECDSA P-256 or Ed25519, made with
``cryptography``) in a self-signed certificate, plus the ``SSL_CTX`` every server core of that
host shares. Sharing matters beyond speed: the ticket keys and the session cache that make
resumption and 0-RTT anti-replay work live in the ``SSL_CTX`` (RFC 8446 §4.6.1, §8.1).

use-tls-00 wants raw public keys (RFC 7250); OpenSSL through this binding cannot do raw public
keys, so the key travels in a certificate that nobody validates (the draft allows X.509 as a
MAY). Clients may pin the key by the SHA-256 of its SubjectPublicKeyInfo.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from testbed import keylog
from testbed.teps.tls import _ossl
from testbed.teps.tls.constants import (
    CIPHERSUITES,
    DEFAULT_MAX_EARLY_DATA,
    GROUPS,
    KEY_TYPES,
    SIGALGS,
)
from testbed.teps.tls.errors import TlsConfigError

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

# Fixed validity: nothing validates the certificate, and a fixed window keeps it independent of
# the clock of the machine that made it.
_NOT_BEFORE = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
_NOT_AFTER = datetime.datetime(2099, 12, 31, tzinfo=datetime.UTC)
_SESSION_ID_CONTEXT = b"tcpinc-use-tls"
OP_NO_ANTI_REPLAY = 0x01000000  # SSL_OP_NO_ANTI_REPLAY (OpenSSL 1.1.1+, ssl.h)
SPARE_CONNECTIONS = 2  # server SSL objects ``prepare`` keeps made ahead, at most


def spki_sha256(certificate: x509.Certificate) -> bytes:
    """SHA-256 over the DER SubjectPublicKeyInfo: the value a client pins."""
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


def _generate_key(key_type: str) -> PrivateKey:
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise TlsConfigError(f"key type {key_type!r} not in {KEY_TYPES}")


def _self_signed(key: PrivateKey, common_name: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
    )
    # Ed25519 signs without a separate hash (RFC 8410); ECDSA uses SHA-256.
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


def _base_context(ciphersuites: tuple[str, ...], groups: tuple[str, ...]) -> SSL.Context:
    """TLS 1.3 only (use-tls-00 profile), with the suites and groups given."""
    bad = [c for c in ciphersuites if c not in CIPHERSUITES]
    if bad or not ciphersuites:
        raise TlsConfigError(f"cipher suites {bad or '(none)'} not in the profile {CIPHERSUITES}")
    bad = [g for g in groups if g not in GROUPS]
    if bad or not groups:
        raise TlsConfigError(f"groups {bad or '(none)'} not in the profile {GROUPS}")
    _ossl.require_bindings()
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_tls13_ciphersuites(":".join(ciphersuites).encode())
    _ossl.set_groups(ctx, groups)
    _ossl.install_message_callback(ctx)
    return ctx


class ServerIdentity:
    """One host's TLS server key, certificate and shared server context; keep it for the run.

    ``resumption`` lets the server honour tickets (beyond use-tls-00, which forbids
    resumption); ``max_early_data`` > 0 also accepts 0-RTT (RFC 8446 §4.2.10) and needs
    ``resumption``. With 0-RTT on, OpenSSL makes tickets single-use through the session cache
    (RFC 8446 §8.1), so a replayed ticket falls back to a full handshake.
    """

    def __init__(
        self,
        key_type: str = "ecdsa-p256",
        *,
        resumption: bool = False,
        max_early_data: int = 0,
        ciphersuites: tuple[str, ...] = CIPHERSUITES,
        groups: tuple[str, ...] = GROUPS,
        common_name: str = "tcpinc-use-tls",
        anti_replay: bool = True,
    ) -> None:
        if max_early_data < 0 or (max_early_data and not resumption):
            raise TlsConfigError("max_early_data > 0 needs resumption=True (0-RTT rides a PSK)")
        self.key_type = key_type
        self.resumption = resumption
        self.max_early_data = max_early_data
        self.anti_replay = anti_replay
        self.private_key: PrivateKey = _generate_key(key_type)
        self.certificate = _self_signed(self.private_key, common_name)
        self.spki_sha256 = spki_sha256(self.certificate)
        self.context = self._make_context(ciphersuites, groups)
        self._spares: list[SSL.Connection] = []

    def connection(self) -> SSL.Connection:
        """A server ``SSL`` object of this context in accept state: one ``prepare`` made
        ahead if there is one, else a new one."""
        try:
            return self._spares.pop()  # atomic: connection threads may share the identity
        except IndexError:
            return self._new_connection()

    def prepare(self) -> None:
        """Make a later connection's ``SSL`` object now, while the server waits for it (off
        the path from the ClientHello to the server's flight); at most SPARE_CONNECTIONS are
        kept. An object made ahead is the one ``SSL_new`` would make then: the context is
        complete once the identity exists."""
        if len(self._spares) < SPARE_CONNECTIONS:
            self._spares.append(self._new_connection())

    def _new_connection(self) -> SSL.Connection:
        conn = SSL.Connection(self.context)
        conn.set_accept_state()
        return conn

    def _make_context(
        self, ciphersuites: tuple[str, ...], groups: tuple[str, ...]
    ) -> SSL.Context:
        ctx = _base_context(ciphersuites, groups)
        ctx.use_certificate(self.certificate)
        ctx.use_privatekey(self.private_key)
        ctx.check_privatekey()
        ctx.set_session_id(_SESSION_ID_CONTEXT)
        if not self.resumption:
            # Stateful tickets whose state is never stored: a ticket still goes out (the
            # binding lacks SSL_CTX_set_num_tickets) but can never be redeemed.
            ctx.set_options(SSL.OP_NO_TICKET)
            ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        if self.max_early_data:
            _ossl.set_max_early_data(ctx, self.max_early_data)
        if not self.anti_replay:
            # Measurement only (tcpinc bench replay): tickets stay reusable, so a replayed
            # ClientHello's 0-RTT data is accepted again (RFC 8446 §8 explains the risk).
            ctx.set_options(OP_NO_ANTI_REPLAY)
        return ctx

    @classmethod
    def with_early_data(cls, key_type: str = "ecdsa-p256", *,
                        anti_replay: bool = True) -> ServerIdentity:
        """Resumption and 0-RTT on, one record of early data allowed; ``anti_replay``
        False turns OpenSSL's single-use tickets off (SSL_OP_NO_ANTI_REPLAY)."""
        return cls(key_type, resumption=True, max_early_data=DEFAULT_MAX_EARLY_DATA,
                   anti_replay=anti_replay)

    def write_pem(self, directory: Path) -> tuple[Path, Path]:
        """Write cert.pem and key.pem (for ``openssl s_server``); returns their paths."""
        cert_path = directory / "cert.pem"
        key_path = directory / "key.pem"
        cert_path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            self.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path


# functools.lru_cache may call the function twice for one key when two threads miss at once
# (each gets its own result), and two contexts break resumption: pyOpenSSL refuses a session
# made under another SSL.Context, and two server identities hold different ticket keys. The
# shared objects are made under this lock (a client with several connections at once).
_SHARED = threading.Lock()


def default_identity() -> ServerIdentity:
    """The process-wide identity used when a server core gets none: the use-tls-00 profile."""
    with _SHARED:
        return _default_identity()


@functools.lru_cache(maxsize=1)
def _default_identity() -> ServerIdentity:
    return ServerIdentity()


def client_context(ciphersuites: tuple[str, ...], groups: tuple[str, ...]) -> SSL.Context:
    """Client contexts are shared per (suites, groups); per-connection settings go on the SSL.

    Certificate checking happens per connection (pinning); there is no trust store, so the
    verify callback decides alone (use-tls-00: no validation unless configured).
    """
    with _SHARED:
        return _client_context(ciphersuites, groups)


@functools.lru_cache(maxsize=32)
def _client_context(ciphersuites: tuple[str, ...], groups: tuple[str, ...]) -> SSL.Context:
    ctx = _base_context(ciphersuites, groups)
    _ossl.set_sigalgs(ctx, SIGALGS)
    # The engine keeps tickets in its own cache object, not in OpenSSL's client cache.
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    if keylog.tls_enabled():  # analysis runs only: SSLKEYLOGFILE (testbed/keylog.py)
        ctx.set_keylog_callback(keylog.tls_callback)
    return ctx
