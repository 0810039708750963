"""TCP-use-TLS TEP (draft-ietf-tcpinc-use-tls): TLS 1.3 through OpenSSL, TEP id 0x30.

The id is non-standard (the draft expired without an IANA assignment). Nothing is registered
at import; call ``register_all()``.
"""

from __future__ import annotations

from testbed.teps import base
from testbed.teps.tls.constants import TEP_ID, TEP_LABEL, TEP_NAME
from testbed.teps.tls.core import TlsCore, make_core
from testbed.teps.tls.errors import TlsAlertError, TlsConfigError, TlsIntegrityError
from testbed.teps.tls.identity import ServerIdentity, default_identity, spki_sha256
from testbed.teps.tls.session_cache import TlsSessionCache

TLS_SPEC = base.TepSpec(
    tep_id=TEP_ID, name=TEP_NAME, standard=False, factory=make_core, label=TEP_LABEL
)


def register_all() -> list[base.TepSpec]:
    """Register the TLS TEP; calling it again is harmless."""
    existing = base.by_id(TEP_ID)
    if existing is TLS_SPEC:
        return [TLS_SPEC]
    return [base.register(TLS_SPEC)]


__all__ = [
    "TLS_SPEC",
    "ServerIdentity",
    "TlsAlertError",
    "TlsConfigError",
    "TlsCore",
    "TlsIntegrityError",
    "TlsSessionCache",
    "default_identity",
    "make_core",
    "register_all",
    "spki_sha256",
]
