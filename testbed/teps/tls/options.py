"""``TepContext.options`` for the TLS TEP, parsed into a keyword-only dataclass.

Unknown keys are refused (a misspelt ``early_date`` must not silently mean "no 0-RTT"). The
keys and what they mean are listed in ``testbed.teps.tls.core``'s module docstring.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from testbed.teps.tls.constants import CIPHERSUITES, GROUPS
from testbed.teps.tls.errors import TlsConfigError
from testbed.teps.tls.identity import ServerIdentity
from testbed.teps.tls.session_cache import TlsSessionCache

MODES = ("eno", "plain")


@dataclass(frozen=True, kw_only=True)
class TlsOptions:
    mode: str = "eno"
    server_identity: ServerIdentity | None = None
    session_cache: TlsSessionCache | None = None
    session_peer: str = ""
    early_data: bytes = b""
    first_data: bytes = b""
    pin_spki_sha256: frozenset[bytes] = frozenset()
    ciphersuites: tuple[str, ...] = CIPHERSUITES
    groups: tuple[str, ...] = GROUPS
    middlebox_compat: bool = True
    half_rtt_data: bool = False

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> TlsOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TlsConfigError(f"unknown TLS TEP option(s) {unknown}; known: {sorted(known)}")
        values = dict(options)
        if "pin_spki_sha256" in values:
            values["pin_spki_sha256"] = _pins(values["pin_spki_sha256"])
        for key in ("ciphersuites", "groups"):
            if key in values:
                values[key] = tuple(values[key])
        parsed = cls(**values)
        parsed._validate()
        return parsed

    def _validate(self) -> None:
        if self.mode not in MODES:
            raise TlsConfigError(f"mode {self.mode!r} not in {MODES}")
        if not isinstance(self.early_data, bytes) or not isinstance(self.first_data, bytes):
            raise TlsConfigError("early_data and first_data must be bytes")
        if self.early_data and self.first_data:
            raise TlsConfigError("first_data and early_data exclude each other (early_data "
                                 "already goes out after the handshake when 0-RTT is refused)")
        if self.server_identity is not None and not isinstance(
            self.server_identity, ServerIdentity
        ):
            raise TlsConfigError("server_identity must be a ServerIdentity")
        if self.session_cache is not None and not isinstance(
            self.session_cache, TlsSessionCache
        ):
            raise TlsConfigError("session_cache must be a TlsSessionCache")
        if self.early_data and self.session_cache is None:
            raise TlsConfigError("early_data needs a session_cache (0-RTT rides a ticket)")

    def conflicts_with_role(self, is_client: bool) -> list[str]:
        """Options set that the other role uses (they would be silently ignored otherwise)."""
        other: tuple[str, ...]
        if is_client:
            other = ("server_identity", "half_rtt_data")
        else:
            other = ("session_cache", "session_peer", "early_data", "first_data",
                     "pin_spki_sha256", "ciphersuites", "groups")
        defaults = TlsOptions()
        return [k for k in other if getattr(self, k) != getattr(defaults, k)]


_PIN_ERROR = "pin_spki_sha256 must be a 32-byte SHA-256 or a collection of them"


def _pins(value: object) -> frozenset[bytes]:
    if isinstance(value, bytes):
        items: list[object] = [value]
    elif isinstance(value, list | tuple | set | frozenset):
        items = list(value)
    else:
        raise TlsConfigError(_PIN_ERROR)
    if not items or any(not isinstance(p, bytes) or len(p) != 32 for p in items):
        raise TlsConfigError(_PIN_ERROR)
    return frozenset(p for p in items if isinstance(p, bytes))
