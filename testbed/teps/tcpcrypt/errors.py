"""tcpcrypt's errors, all under the TEP hierarchy of ``testbed.teps.base``.

Every failure RFC 8548 turns into "abort the connection and raise an error condition distinct
from the end-of-file condition" (§3.3, §3.6, §3.7, §8) is a ``RemoteProtocolError`` here: the
stream layer answers it with an RST. tcpcrypt puts no error code on the wire, so ``code`` is None.
"""

from __future__ import annotations

from testbed.teps.base import LocalProtocolError, RemoteProtocolError


class WireError(RemoteProtocolError):
    """A received message or frame is malformed (RFC 8548 §4)."""


class BadMagicError(WireError):
    """Init1/Init2 does not start with its magic number (§4.1, §4.3)."""


class BadLengthError(WireError):
    """A length field (message_len, nciphers, pubkey_len, clen) is impossible (§4.1, §4.2, §5)."""


class CipherError(WireError):
    """sym_cipher was not offered, is unknown, or no offered cipher is acceptable (§3.3)."""


class BadPublicKeyError(RemoteProtocolError):
    """The peer's ephemeral public key failed validation, or forced a weak secret (§3.3, §5)."""


class ResumptionError(RemoteProtocolError):
    """The peer's resumption suboption does not match the session we offered (§3.5)."""


class IllegalTransition(LocalProtocolError):
    """The state machine was asked for a transition its table does not have."""
