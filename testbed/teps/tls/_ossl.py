"""The few OpenSSL calls pyOpenSSL has no method for, made through its own cffi binding.

pyOpenSSL wraps ``SSL_CTX``/``SSL`` objects of the OpenSSL that ``cryptography`` ships and
exposes that library's cffi handle as ``OpenSSL._util.lib``/``ffi``. Everything here goes
through that handle, so there is one OpenSSL in the process. The binding is a subset of the C
API; what it lacks in this build (checked against pyOpenSSL 26.4, OpenSSL 4.0):

* ``SSL_get_early_data_status``: the client learns whether 0-RTT was accepted by watching for
  its own EndOfEarlyData message (RFC 8446 §4.5: sent only if the server accepted) through the
  message callback below;
* ``SSL_clear_options``/``SSL_CTX_clear_options``: middlebox compatibility mode, on by default
  in OpenSSL, cannot be switched off per connection (see ``compat_default_on``);
* ``SSL_CTX_set_num_tickets``: a server always sends OpenSSL's default two NewSessionTickets
  after a full handshake (one after a resumption), even with resumption disabled.

This module is the only one that touches ``lib``/``ffi`` or pyOpenSSL private attributes.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from OpenSSL import SSL
from OpenSSL._util import ffi, lib

from testbed.teps.tls.constants import (
    CONTENT_ALERT,
    CONTENT_HANDSHAKE,
    OP_ENABLE_MIDDLEBOX_COMPAT,
    READ_EARLY_DATA_ERROR,
)

_REQUIRED = (
    "SSL_write_early_data",
    "SSL_read_early_data",
    "SSL_CTX_set_max_early_data",
    "SSL_SESSION_get_max_early_data",
    "SSL_CTX_set1_curves_list",
    "SSL_CTX_set1_sigalgs_list",
    "SSL_CTX_set_msg_callback",
    "SSL_set_options",
    "SSL_get_options",
    "SSL_CTX_get_options",
    "SSL_get_error",
)


def missing_bindings() -> list[str]:
    """Names this module needs that the installed binding lacks (empty when all is well)."""
    return [name for name in _REQUIRED if not hasattr(lib, name)]


def require_bindings() -> None:
    missing = missing_bindings()
    if missing:
        raise RuntimeError(
            "the OpenSSL binding under pyOpenSSL lacks " + ", ".join(missing)
            + "; the TLS TEP needs them (0-RTT, groups, alerts)"
        )


# --- Observing the handshake: alerts and handshake message types ---------------------------


@dataclass
class WireLog:
    """Plaintext alerts and handshake message types one connection sent and received."""

    alerts: list[tuple[bool, int]] = field(default_factory=list)  # (sent, description)
    handshake: list[tuple[bool, int]] = field(default_factory=list)  # (sent, HandshakeType)

    def saw_handshake(self, *, sent: bool, msg_type: int) -> bool:
        return (sent, msg_type) in self.handshake

    def count_handshake(self, *, sent: bool, msg_type: int) -> int:
        return self.handshake.count((sent, msg_type))

    def last_alert(self) -> tuple[bool, int] | None:
        return self.alerts[-1] if self.alerts else None


# SSL* address -> log; weak so a dropped core takes its entry with it.
_LOGS: weakref.WeakValueDictionary[int, WireLog] = weakref.WeakValueDictionary()


def _address(ssl_ptr: Any) -> int:
    return int(ffi.cast("uintptr_t", ssl_ptr))


# cffi ships no type information, so its callback decorator is untyped.
@ffi.callback("void(int, int, int, void *, size_t, SSL *, void *)")  # type: ignore[untyped-decorator]
def _on_message(
    write_p: int, version: int, content_type: int, buf: Any, length: int, ssl: Any, arg: Any
) -> None:
    # OpenSSL calls this with decrypted messages (SSL_CTX_set_msg_callback); it must not raise.
    if content_type not in (CONTENT_ALERT, CONTENT_HANDSHAKE) or length < 1:
        return
    log = _LOGS.get(_address(ssl))
    if log is None:
        return
    first = bytes(ffi.buffer(buf, min(length, 2)))
    if content_type == CONTENT_ALERT and len(first) == 2:
        # RFC 8446 §6: Alert = level(1) || description(1).
        log.alerts.append((bool(write_p), first[1]))
    elif content_type == CONTENT_HANDSHAKE:
        log.handshake.append((bool(write_p), first[0]))


def install_message_callback(ctx: SSL.Context) -> None:
    lib.SSL_CTX_set_msg_callback(ctx._context, _on_message)


def attach_wire_log(conn: SSL.Connection) -> WireLog:
    log = WireLog()
    _LOGS[_address(conn._ssl)] = log
    return log


# --- Context and connection settings -------------------------------------------------------


def _check(ok: int, what: str) -> None:
    if ok != 1:
        raise ValueError(f"OpenSSL refused {what}")


def set_groups(ctx: SSL.Context, groups: tuple[str, ...]) -> None:
    _check(int(lib.SSL_CTX_set1_curves_list(ctx._context, ":".join(groups).encode())), "groups")


def set_sigalgs(ctx: SSL.Context, sigalgs: str) -> None:
    _check(int(lib.SSL_CTX_set1_sigalgs_list(ctx._context, sigalgs.encode())), "sigalgs")


def set_max_early_data(ctx: SSL.Context, size: int) -> None:
    _check(int(lib.SSL_CTX_set_max_early_data(ctx._context, size)), "max_early_data")


def compat_default_on() -> bool:
    """Does a fresh SSL_CTX have middlebox compatibility mode (RFC 8446 §D.4) switched on?

    OpenSSL sets it in SSL_CTX_new unless the process configuration (OPENSSL_CONF, section
    system_default, ``Options = -MiddleboxCompat``) removes it; the binding cannot clear it.
    """
    ctx = SSL.Context(SSL.TLS_METHOD)
    return bool(int(lib.SSL_CTX_get_options(ctx._context)) & OP_ENABLE_MIDDLEBOX_COMPAT)


def set_middlebox_compat(conn: SSL.Connection, enabled: bool) -> bool:
    """Switch compatibility mode for one connection; False if "off" cannot be honoured."""
    if enabled:
        lib.SSL_set_options(conn._ssl, OP_ENABLE_MIDDLEBOX_COMPAT)
    return bool(int(lib.SSL_get_options(conn._ssl)) & OP_ENABLE_MIDDLEBOX_COMPAT) == enabled


# --- Early data (RFC 8446 §2.3, §4.2.10) ---------------------------------------------------


def session_max_early_data(session: SSL.Session) -> int:
    return int(lib.SSL_SESSION_get_max_early_data(session._session))


def write_early_data(conn: SSL.Connection, data: bytes) -> int:
    """SSL_write_early_data: client 0-RTT data, or server 0.5-RTT data. Returns bytes taken.

    Raises the pyOpenSSL exception for the failure (WantReadError, Error, ...), as
    ``Connection.send`` would.
    """
    written = ffi.new("size_t *")
    result = int(lib.SSL_write_early_data(conn._ssl, data, len(data), written))
    if result != 1:
        conn._raise_ssl_error(conn._ssl, result)
        raise SSL.Error([("tcpinc-tls", "SSL_write_early_data", f"returned {result}")])
    return int(written[0])


def read_early_data(conn: SSL.Connection, bufsize: int = 16384) -> tuple[int, bytes]:
    """SSL_read_early_data: (status, data) with status SUCCESS or FINISH.

    An ERROR status is turned into the pyOpenSSL exception (WantReadError while the
    ClientHello or the rest of the early data has not arrived yet).
    """
    buf = ffi.new("char[]", bufsize)
    nread = ffi.new("size_t *")
    status = int(lib.SSL_read_early_data(conn._ssl, buf, bufsize, nread))
    if status == READ_EARLY_DATA_ERROR:
        conn._raise_ssl_error(conn._ssl, status)
        raise SSL.Error([("tcpinc-tls", "SSL_read_early_data", "failed without a reason")])
    return status, bytes(ffi.buffer(buf, int(nread[0])))


def session_reused(conn: SSL.Connection) -> bool:
    """SSL_session_reused: the handshake used a PSK from a ticket (RFC 8446 §2.2)."""
    return bool(lib.SSL_session_reused(conn._ssl))
