"""TLS TEP errors: the base TEP errors plus the TLS alert that caused them.

Every error raised by the engine is one of the ``testbed.teps.base`` classes, so callers need
not know TLS. The subclasses here add what a TLS-aware caller wants: the alert (RFC 8446 §6)
that was sent or received and the bytes still owed to the peer (usually that very alert), which
the stream layer may write before it tears the connection down. The core itself refuses every
call once it failed, so those bytes travel on the exception.
"""

from __future__ import annotations

from testbed.teps.base import IntegrityError, LocalProtocolError, RemoteProtocolError, TepError
from testbed.teps.tls.constants import INTEGRITY_ALERTS, alert_name


class TlsConfigError(LocalProtocolError, ValueError):
    """Bad or unsupported option values; also a ValueError so plain config code can catch it."""


class TlsAlertError(RemoteProtocolError):
    """The handshake or record layer failed; ``alert`` names the TLS alert if there was one."""

    def __init__(
        self, message: str, *, alert: int | None, alert_sent: bool, unsent: bytes = b""
    ) -> None:
        super().__init__(message, code=alert)
        self.alert = alert
        self.alert_sent = alert_sent
        self.unsent = unsent


class TlsIntegrityError(IntegrityError):
    """A record tag, Finished MAC or signature did not verify (bad_record_mac, decrypt_error)."""

    def __init__(
        self, message: str, *, alert: int | None, alert_sent: bool, unsent: bytes = b""
    ) -> None:
        super().__init__(message, code=alert)
        self.alert = alert
        self.alert_sent = alert_sent
        self.unsent = unsent


def alert_error(
    *, alert: int | None, alert_sent: bool, detail: str, unsent: bytes = b""
) -> TepError:
    """Build the error for a failure; integrity alerts become ``IntegrityError``.

    ``detail`` is what OpenSSL reported; the message always leads with the alert so a log line
    says what went on the wire.
    """
    if alert is None:
        head = "TLS failure without an alert"
    elif alert_sent:
        head = f"TLS fatal alert {alert_name(alert)} sent to peer"
    else:
        head = f"peer sent TLS fatal alert {alert_name(alert)}"
    message = f"{head}: {detail}" if detail else head
    if alert in INTEGRITY_ALERTS:
        return TlsIntegrityError(message, alert=alert, alert_sent=alert_sent, unsent=unsent)
    return TlsAlertError(message, alert=alert, alert_sent=alert_sent, unsent=unsent)
