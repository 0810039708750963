"""The TLS protocol arms of the workload apps, the probe and the experiments (registered at import).

One engine (testbed/teps/tls, TLS 1.3 through OpenSSL) behind every arm; the arms differ in how
it reaches the wire and in the variant:

ENO arms -- TCP-use-TLS, negotiated by TCP-ENO as TEP 0x30 (non-standard: no IANA codepoint):
    tls           draft-ietf-tcpinc-use-tls-00 profile: a full handshake on every connection.
    tls-resume    PSK resumption with session tickets (RFC 8446 §2.2). Beyond the draft, which
                  forbids resumption.
    tls-0rtt      resumption plus the request as 0-RTT early data (RFC 8446 §2.3, §4.2.10); the
                  server answers at 0.5-RTT. Beyond the draft.
Non-ENO arms -- "ordinary TLS 1.3 over TCP without ENO" (what HTTPS does): the same engine in
plain mode (no ENO transcript in the session ID) over a plain kernel TCP socket:
    tls-noeno, tls-noeno-resume, tls-noeno-0rtt, and each with ``-tfo``: TCP Fast Open, the
    ClientHello (and any early data) written through TCP_FASTOPEN_CONNECT so it rides on the
    SYN once the client holds a cookie (RFC 7413 §3; the first connection fetches the cookie).
Compatibility-mode-off arms -- ``tls-nocompat``, ``tls-noeno-nocompat``: as ``tls`` and
    ``tls-noeno`` without middlebox compatibility mode (RFC 8446 §D.4). OpenSSL can switch that
    mode off only through the process configuration, so these arms exist only in processes
    started with an OPENSSL_CONF whose system_default section says
    ``Options = -MiddleboxCompat`` (both hosts' processes inherit it from the CLI), e.g.
    ``OPENSSL_CONF=nocompat.cnf tcpinc probe --proto tls-noeno-nocompat``.

``-resume`` and ``-0rtt`` arms: the first connection of a client process is a full handshake
that fetches a ticket; each later one offers the newest ticket (a ticket is used once, RFC 8446
§C.4). Records say ``resumed`` and ``early_data_accepted``, so analyses keep only resumed
connections of these arms; ``variant_label`` names what the arm is, including "beyond the
draft" where that applies.

Per-host state: each server process (one per host and workload run) keeps one
``ServerIdentity`` per server profile for its whole life -- the key, and the SSL_CTX whose ticket
keys and single-use cache make resumption and 0-RTT anti-replay work (RFC 8446 §8.1). Each
client process keeps one ``TlsSessionCache``, keyed by the server's address.

Failures: a TLS handshake or record failure resets the connection and raises the stream layer's
``TepFailure`` (``IntegrityFailure`` for a bad record MAC); nothing unauthenticated reaches the
application, and after ENO chose TLS nothing is ever sent in clear.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from testbed import stream as eno_stream
from testbed.apps.proto_tls_arm import (
    BEYOND,
    CLOSE_WAIT,
    DRAFT_LABEL,
    HANDSHAKE_TIMEOUT,
    NOENO_LABEL,
    Addr,
    TlsArm,
    TlsConn,
    TlsProvider,
    client_cache,
    server_identity,
)
from testbed.apps.proto_tls_plain import (
    TlsPlainTransport,
    connect_overlapped,
    prepare_tls,
    run_tls,
)
from testbed.apps.registry import register_transport
from testbed.errors import ConfigError
from testbed.teps import tls
from testbed.teps.tls import _ossl
from testbed.teps.tls.constants import TEP_NAME

__all__ = [
    "BEYOND", "CLOSE_WAIT", "DRAFT_LABEL", "HANDSHAKE_TIMEOUT", "NOENO_LABEL", "Addr", "TlsArm",
    "TlsConn", "TlsEnoTransport", "TlsPlainTransport", "TlsProvider", "client_cache",
    "compat_off_available", "connect_overlapped", "prepare_tls", "run_tls", "server_identity",
]


# --- ENO arms ---------------------------------------------------------------------------------


@dataclass
class TlsEnoTransport:
    """TCP-ENO through the host's hook, then TLS as TEP 0x30 (testbed/stream.py)."""

    arm: TlsArm
    policy: str = "opportunistic"
    uses_eno: bool = True
    listener: eno_stream.Listener | None = None

    @property
    def name(self) -> str:
        return self.arm.name

    @property
    def description(self) -> str:
        return self.arm.variant_label

    def config(
        self, *, server: bool, first: bytes = b"", timeout: float = HANDSHAKE_TIMEOUT
    ) -> eno_stream.StreamConfig:
        return eno_stream.StreamConfig(
            policy=eno_stream.Policy(self.policy), teps=(TEP_NAME,),
            providers={TEP_NAME: TlsProvider(self.arm, first, with_finished=not server)},
            early_handoff=server and self.arm.early_data, handshake_timeout=timeout,
        )

    def connect(self, addr: Addr, timeout: float, first: bytes) -> tuple[TlsConn, int]:
        """Open a stream; the request goes to TLS (0-RTT arms: early data when a ticket
        allows it; the others: in the flight of the client's Finished). Nothing rides on the
        SYN: ENO bans SYN data for this TEP (RFC 8547 §4.7)."""
        config = self.config(server=False, first=first, timeout=timeout)
        stream = eno_stream.connect(addr, config, timeout=timeout)
        # After a fallback the stream is plain TCP and the request is still to be sent.
        taken = stream.info.tep == TEP_NAME
        conn = TlsConn(stream, self.arm, client=True, request_in_tls=bool(first) and taken)
        return conn, len(first) if taken else 0

    def listen(self, sock: socket.socket) -> None:
        server_identity(self.arm.server_profile)  # key and certificate before the first SYN
        self.listener = eno_stream.Listener(sock, self.config(server=True))

    def prepare(self) -> None:
        """Between connections: what the next accepted one needs (testbed/stream.py)."""
        if self.listener is not None:
            self.listener.prepare()

    def accept(self, sock: socket.socket, addr: Addr | None = None) -> TlsConn:
        if self.listener is None:
            raise ConfigError(f"{self.arm.name}: accept before listen")
        return TlsConn(self.listener.wrap(sock, addr), self.arm, client=False)


# --- registration -----------------------------------------------------------------------------


def _arms() -> list[TlsArm]:
    arms = [
        TlsArm(name="tls", eno=True, variant_label=DRAFT_LABEL),
        TlsArm(name="tls-resume", eno=True, resume=True,
               variant_label=f"TCP-use-TLS + PSK resumption (TEP 0x30, non-standard; {BEYOND})"),
        TlsArm(name="tls-0rtt", eno=True, early_data=True,
               variant_label=f"TCP-use-TLS + 0-RTT early data (TEP 0x30, non-standard; "
                             f"{BEYOND})"),
    ]
    for tfo in (False, True):
        suffix, tfo_note = ("-tfo", " + TCP Fast Open") if tfo else ("", "")
        arms += [
            TlsArm(name=f"tls-noeno{suffix}", eno=False, tfo=tfo,
                   variant_label=f"{NOENO_LABEL}{tfo_note}"),
            TlsArm(name=f"tls-noeno-resume{suffix}", eno=False, resume=True, tfo=tfo,
                   variant_label=f"{NOENO_LABEL}, PSK resumption{tfo_note}"),
            TlsArm(name=f"tls-noeno-0rtt{suffix}", eno=False, early_data=True, tfo=tfo,
                   variant_label=f"{NOENO_LABEL}, 0-RTT early data{tfo_note}"),
        ]
    if compat_off_available():
        arms += [
            TlsArm(name="tls-nocompat", eno=True, compat=False,
                   variant_label=f"{DRAFT_LABEL}, middlebox compatibility mode off"),
            TlsArm(name="tls-noeno-nocompat", eno=False, compat=False,
                   variant_label=f"{NOENO_LABEL}, middlebox compatibility mode off"),
        ]
    return arms


def compat_off_available() -> bool:
    """Whether this process's OpenSSL configuration lets the engine drop compatibility mode."""
    if "OPENSSL_CONF" not in os.environ:
        return False  # the common case, decided without loading OpenSSL
    return not _ossl.compat_default_on()


def _register() -> None:
    tls.register_all()
    for arm in _arms():
        if arm.eno:
            def factory(policy: str, arm: TlsArm = arm) -> TlsEnoTransport:
                return TlsEnoTransport(arm, policy=policy)

            register_transport(arm.name, factory("opportunistic"), factory)
        else:
            register_transport(arm.name, TlsPlainTransport(arm))


_register()
