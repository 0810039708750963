"""Sans-IO TLS 1.3 TEP core (TCP-use-TLS, TEP id 0x30, non-standard) over OpenSSL.

Theory of operation
-------------------
OpenSSL does all of TLS; this module only moves bytes through pyOpenSSL memory BIOs and turns
what OpenSSL did into TEP events. ``receive_data`` writes TCP bytes into the read BIO and lets
OpenSSL advance the handshake or decrypt records; ``data_to_send`` drains the write BIO. ENO
role A is the TLS client (use-tls-00). When the handshake is done, the session ID is
``0x30 || TLS-Exporter(label, context carrying the ENO transcript, 32)`` (see
``constants.py``, RFC 8446 §7.5, RFC 8547 §5.1), the same at both ends.

Closing follows RFC 8446 §6.1: ``close`` queues close_notify, the peer's close_notify becomes
``EndOfStream``, and a TCP FIN (``peer_closed``) without it is a ``TruncationError``. Any
failure puts the core in ERROR; the error names the TLS alert, and integrity alerts
(bad_record_mac, decrypt_error) raise ``IntegrityError``. Authenticated bytes only ever leave
through ``DataReceived``; nothing is returned from a call that failed.

Beyond use-tls-00 (labelled so): PSK resumption with tickets (RFC 8446 §2.2), 0-RTT early
data (RFC 8446 §2.3, §4.2.10), server 0.5-RTT data, a switch for middlebox compatibility mode
(RFC 8446 §D.4), and a plain-TLS mode without ENO.

``TepContext.options`` keys (unknown keys are refused with ``TlsConfigError``)
-----------------------------------------------------------------------------
Both roles:
    mode               "eno" (default): bind ``TepContext.transcript`` into the session ID;
                       "plain": TLS as HTTPS uses it, no transcript (exporter context empty).
    middlebox_compat   bool, default True (OpenSSL's default). False needs a process whose
                       OpenSSL configuration removed the option (see ``_ossl``); otherwise
                       the core refuses to start with ``TlsConfigError``.
Client (role A):
    session_cache      ``TlsSessionCache``: offer a stored ticket and store new ones (resumption).
    session_peer       str, the cache key for this server (default "").
    early_data         bytes sent as 0-RTT data by ``start`` when the offered ticket allows it;
                       without such a ticket they are sent after the handshake instead.
                       Needs ``session_cache``. While 0-RTT is under way, ``send_data`` before
                       the server's first reply is early data too (up to the ticket's
                       max_early_data; the rest waits). If the server rejects 0-RTT the bytes
                       are re-sent after the handshake and ``early_data_accepted`` is False.
    first_data         bytes sent as soon as the handshake is done, in the same flight as the
                       client's Finished (RFC 8446 §2: the client may send application data
                       right after its Finished); no ticket needed. Excludes early_data.
    pin_spki_sha256    32 bytes or a collection of them: SHA-256 of the server key's
                       SubjectPublicKeyInfo. Without it the server key is not checked at all.
    ciphersuites       tuple of RFC 8446 names to offer (default: all three of the profile).
    groups             tuple from ("X25519", "P-256") to offer (default: both).
Server (role B):
    server_identity    ``ServerIdentity`` (key, certificate, shared context, resumption and
                       0-RTT policy). Default: one per process, the use-tls-00 profile.
    half_rtt_data      bool: ``send_data`` before the client's Finished goes out as 0.5-RTT
                       data (RFC 8446 §2) instead of waiting. Needs the early-data read path,
                       which servers with ``max_early_data`` > 0 use.

Caveats: OpenSSL takes time and randomness from the system, not from ``now`` or
``TepContext.random``. The server reports ``early_data_accepted`` as True or None (the binding
cannot tell a rejected attempt from none).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import TypeVar

from OpenSSL import SSL, crypto

from testbed.teps import machine
from testbed.teps.base import (
    DataReceived,
    EndOfStream,
    HandshakeComplete,
    Role,
    TepContext,
    TepError,
    TepEvent,
    TruncationError,
)
from testbed.teps.tls import _ossl
from testbed.teps.tls.constants import (
    ALERT_CLOSE_NOTIFY,
    EXPORTER_LABEL,
    EXPORTER_LENGTH,
    HS_END_OF_EARLY_DATA,
    HS_NEW_SESSION_TICKET,
    READ_EARLY_DATA_FINISH,
    exporter_context,
    session_id_from_exporter,
)
from testbed.teps.tls.errors import TlsAlertError, TlsConfigError, alert_error
from testbed.teps.tls.identity import client_context, default_identity, spki_sha256
from testbed.teps.tls.options import TlsOptions
from testbed.teps.tls.state import TlsState, check_call, check_transition

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
_BIO_CHUNK = 65536
_HS_FINISHED = 20  # RFC 8446 §4 HandshakeType finished


class EarlyPhase(enum.Enum):
    """Where a core is in the 0-RTT window (RFC 8446 §2.3), inside HANDSHAKING."""

    NONE = "none"  # no early-data path in use
    CLIENT_WRITING = "client-writing"  # ClientHello sent with early data, server not heard yet
    SERVER_READING = "server-reading"  # server reading through SSL_read_early_data
    DONE = "done"



def _never() -> None:
    """A TLS core refuses calls through its CALLS table (testbed/teps/tls/state.py)."""
    return None

class TlsCore:
    """One TLS 1.3 connection end; implements ``testbed.teps.base.TepCore``."""

    def __init__(self, ctx: TepContext) -> None:
        self._boundary = machine.Boundary(failed=_never, enter_error=self._enter_error,
                                          catch=(TepError, SSL.Error), translate=self._translated)
        self._opts = TlsOptions.from_mapping(ctx.options)
        self.role = ctx.role
        self._is_client = ctx.role is Role.A
        conflicts = self._opts.conflicts_with_role(self._is_client)
        if conflicts:
            side = "client (role A)" if self._is_client else "server (role B)"
            raise TlsConfigError(f"options {conflicts} do not apply to the TLS {side}")
        # Read when the session ID is made: a TEP whose first flight rides on the SYN (RFC
        # 8547 §4.7) is created before the transcript exists, which the stream fills in later.
        self._ctx = ctx
        self._state = TlsState.IDLE
        self._pin_failed = False
        self._offered: SSL.Session | None = None
        self._server_reads_early = False
        self._conn = self._client_connection() if self._is_client else self._server_connection()
        if not _ossl.set_middlebox_compat(self._conn, self._opts.middlebox_compat):
            raise TlsConfigError(
                "middlebox_compat=False: this OpenSSL binding cannot clear "
                "SSL_OP_ENABLE_MIDDLEBOX_COMPAT; start the process with an OPENSSL_CONF whose "
                "system_default section says 'Options = -MiddleboxCompat'"
            )
        self._wire = _ossl.attach_wire_log(self._conn)
        self._early = EarlyPhase.NONE
        self._early_budget = 0
        self._early_sent = bytearray()  # 0-RTT bytes, re-sent if the server rejects them
        self._pending = bytearray()  # application bytes waiting for the handshake
        self._close_requested = False
        self._tickets_seen = 0
        self._session_id: bytes | None = None
        self.resumed = False
        self.early_data_accepted: bool | None = None

    # --- construction ------------------------------------------------------------------------

    def _client_connection(self) -> SSL.Connection:
        opts = self._opts
        conn = SSL.Connection(client_context(opts.ciphersuites, opts.groups))
        conn.set_connect_state()
        # Nothing is validated (use-tls-00): the callback only enforces an optional pin.
        # Without a pin no callback is installed at all: OpenSSL still checks the
        # CertificateVerify signature (RFC 8446 §4.4.3) but calls no Python for the chain
        # (about 0.05 ms of the client's CPU per handshake, measured in memory).
        if opts.pin_spki_sha256:
            conn.set_verify(SSL.VERIFY_PEER, self._verify_server_key)
        if opts.session_cache is not None:
            self._offered = opts.session_cache.take(opts.session_peer)
            if self._offered is not None:
                conn.set_session(self._offered)
        return conn

    def _server_connection(self) -> SSL.Connection:
        identity = self._opts.server_identity or default_identity()
        conn = identity.connection()  # in accept state; maybe made ahead (``prepare``)
        self._server_reads_early = identity.max_early_data > 0
        if self._opts.half_rtt_data and not self._server_reads_early:
            raise TlsConfigError("half_rtt_data needs a ServerIdentity with max_early_data > 0")
        return conn

    def _verify_server_key(
        self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        if not self._opts.pin_spki_sha256 or depth != 0:
            return True
        if spki_sha256(cert.to_cryptography()) in self._opts.pin_spki_sha256:
            return True
        self._pin_failed = True  # OpenSSL now aborts the handshake with an alert
        return False

    # --- TepCore properties ------------------------------------------------------------------

    @property
    def handshake_complete(self) -> bool:
        return self._session_id is not None

    @property
    def session_id(self) -> bytes | None:
        return self._session_id

    @property
    def state(self) -> TlsState:
        return self._state

    @property
    def cipher_name(self) -> str | None:
        return self._conn.get_cipher_name()

    @property
    def group_name(self) -> str | None:
        return self._conn.get_group_name()

    # --- TepCore calls -----------------------------------------------------------------------

    def start(self, now: float) -> list[TepEvent]:
        self._run("start", self._start)
        return []  # a TLS handshake completes only on the peer's flight (RFC 8446 §2)

    def receive_data(self, data: bytes, now: float) -> list[TepEvent]:
        return self._run("receive_data", lambda: self._receive(data))

    def send_data(self, data: bytes) -> None:
        self._run("send_data", lambda: self._send(data))

    def close(self) -> None:
        self._run("close", self._close)

    def peer_closed(self) -> list[TepEvent]:
        return self._run("peer_closed", self._peer_closed)

    def data_to_send(self) -> bytes:
        return self._run("data_to_send", self._drain)

    # --- error boundary ----------------------------------------------------------------------

    def _run(self, method: str, action: Callable[[], _T]) -> _T:
        """Every public call goes through here: state check, then errors -> ERROR state
        (an OpenSSL error made the TEP error it means first, testbed/teps/machine.py)."""
        with self._boundary:
            check_call(method, self._state)
            return action()

    def _translated(self, exc: Exception) -> TepError | None:
        return self._translate(exc) if isinstance(exc, SSL.Error) else None

    def _translate(self, exc: SSL.Error) -> TepError:
        unsent = self._drain()  # usually the fatal alert OpenSSL just queued
        fatal = [(sent, code) for sent, code in self._wire.alerts if code != ALERT_CLOSE_NOTIFY]
        sent, alert = fatal[-1] if fatal else (False, None)
        detail = _openssl_reasons(exc)
        if isinstance(exc, SSL.ZeroReturnError):
            detail = "peer sent close_notify before the handshake completed"
        if self._pin_failed:
            detail = f"server key does not match pin_spki_sha256 ({detail})"
        return alert_error(alert=alert, alert_sent=sent, detail=detail, unsent=unsent)

    def _enter_error(self) -> None:
        if self._state is not TlsState.ERROR:
            self._set_state(TlsState.ERROR)
        self._pending.clear()
        self._early_sent.clear()

    def _set_state(self, new: TlsState) -> None:
        check_transition(self._state, new)
        _log.debug("tls %s: %s -> %s", self.role.value, self._state.value, new.value)
        self._state = new

    # --- handshake ---------------------------------------------------------------------------

    def _start(self) -> None:
        self._set_state(TlsState.HANDSHAKING)
        if not self._is_client:
            if self._server_reads_early:
                self._early = EarlyPhase.SERVER_READING
            return
        early = self._opts.early_data
        budget = _ossl.session_max_early_data(self._offered) if self._offered else 0
        if early and budget > 0:
            # RFC 8446 §4.2.10: early data rides the first flight, under the ticket's PSK.
            self._early = EarlyPhase.CLIENT_WRITING
            self._early_budget = budget
            self._write_early(early)
            return
        # No ticket allows 0-RTT: send after the handshake, with the client's Finished.
        self._pending += early or self._opts.first_data
        self._handshake_step()  # writes the ClientHello

    def _handshake_step(self) -> bool:
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            return False
        return True

    def _receive(self, data: bytes) -> list[TepEvent]:
        events: list[TepEvent] = []
        if self._state in (TlsState.REMOTE_CLOSED, TlsState.CLOSED) or not data:
            return events  # RFC 8446 §6.1: data after close_notify is ignored
        self._conn.bio_write(data)
        if self._state is TlsState.HANDSHAKING:
            self._advance_handshake(events)
        if self._state in (TlsState.OPEN, TlsState.LOCAL_CLOSED):
            self._read_records(events)
        return events

    def _advance_handshake(self, events: list[TepEvent]) -> None:
        if self._early is EarlyPhase.SERVER_READING and not self._read_early(events):
            return
        if self._early is EarlyPhase.CLIENT_WRITING:
            # The server answered: no more 0-RTT; OpenSSL sends EndOfEarlyData if accepted.
            self._early = EarlyPhase.DONE
        if self._handshake_step():
            self._handshake_done(events)

    def _read_early(self, events: list[TepEvent]) -> bool:
        """Server: deliver 0-RTT data; True once the early-data phase is over."""
        received = bytearray()
        finished = False
        while not finished:
            try:
                status, chunk = _ossl.read_early_data(self._conn)
            except SSL.WantReadError:
                break
            received += chunk
            finished = status == READ_EARLY_DATA_FINISH
        if received:
            # Authenticated under the PSK but replayable (RFC 8446 §8): flagged early.
            events.append(DataReceived(bytes(received), early=True))
        if finished:
            self._early = EarlyPhase.DONE
        return finished

    def _handshake_done(self, events: list[TepEvent]) -> None:
        self.resumed = _ossl.session_reused(self._conn)
        self.early_data_accepted = self._early_outcome()
        if self._is_client and self.resumed and self._opts.pin_spki_sha256:
            self._check_resumed_pin()
        context = exporter_context(None if self._opts.mode == "plain" else self._ctx.transcript)
        secret = self._conn.export_keying_material(EXPORTER_LABEL, EXPORTER_LENGTH, context)
        self._session_id = session_id_from_exporter(secret)
        self._set_state(TlsState.OPEN)
        events.append(HandshakeComplete(self._session_id, self.resumed, self.early_data_accepted))
        if self.early_data_accepted is False:
            # RFC 8446 §4.2.10: rejected 0-RTT data is lost; the client may send it again.
            self._pending[:0] = self._early_sent
        self._early_sent.clear()
        if self._pending:
            self._conn.sendall(bytes(self._pending))
            self._pending.clear()
        if self._close_requested:
            self._send_close_notify()

    def _early_outcome(self) -> bool | None:
        if self._is_client:
            if not self._early_budget:
                return None
            # RFC 8446 §4.5: the client sends EndOfEarlyData only if the server accepted.
            return self._wire.saw_handshake(sent=True, msg_type=HS_END_OF_EARLY_DATA)
        if self._wire.saw_handshake(sent=False, msg_type=HS_END_OF_EARLY_DATA):
            return True
        return None

    def _check_resumed_pin(self) -> None:
        # A resumption carries no Certificate (RFC 8446 §2.2); check the key the session
        # remembers, in case the ticket came from a server that was not pinned.
        cert = self._conn.get_peer_certificate(as_cryptography=True)
        if cert is None or spki_sha256(cert) not in self._opts.pin_spki_sha256:
            raise TlsAlertError(
                "resumed session's server key does not match pin_spki_sha256",
                alert=None,
                alert_sent=False,
            )

    # --- application data --------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        if not data:
            return
        if self._state is not TlsState.HANDSHAKING:
            self._conn.sendall(data)
        elif self._early is EarlyPhase.CLIENT_WRITING:
            self._write_early(data)
        elif self._half_rtt_open():
            _ossl.write_early_data(self._conn, data)  # 0.5-RTT, to a client not yet verified
        else:
            self._pending += data

    def _write_early(self, data: bytes) -> None:
        room = self._early_budget - len(self._early_sent)
        head, tail = data[:room], data[room:]
        if head:
            taken = _ossl.write_early_data(self._conn, head)
            self._early_sent += head[:taken]
            tail = head[taken:] + tail
        self._pending += tail  # beyond max_early_data: ordinary data after the handshake

    def _half_rtt_open(self) -> bool:
        # OpenSSL allows server writes once its Finished is out and while it is still on the
        # SSL_read_early_data path (before the client's Finished).
        return (
            not self._is_client
            and self._opts.half_rtt_data
            and self._early is not EarlyPhase.NONE
            and self._wire.saw_handshake(sent=True, msg_type=_HS_FINISHED)
        )

    def _read_records(self, events: list[TepEvent]) -> None:
        received: list[bytes] = []  # joined once: a single read is delivered as it is
        ended = False
        while True:
            try:
                received.append(self._conn.recv(_BIO_CHUNK))
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                ended = True
                break
        data = b"".join(received)
        if data:
            events.append(DataReceived(data))
        if ended:
            events.append(EndOfStream())
            closed = self._state is TlsState.LOCAL_CLOSED
            self._set_state(TlsState.CLOSED if closed else TlsState.REMOTE_CLOSED)
        self._store_tickets()

    def _store_tickets(self) -> None:
        cache = self._opts.session_cache
        seen = self._wire.count_handshake(sent=False, msg_type=HS_NEW_SESSION_TICKET)
        if cache is None or seen == self._tickets_seen:
            return
        # Only the newest ticket of a batch is reachable (OpenSSL replaces the session on each
        # NewSessionTicket, RFC 8446 §4.6.1); one per batch is enough for single-use tickets.
        self._tickets_seen = seen
        session = self._conn.get_session()
        if session is not None:
            cache.put(self._opts.session_peer, session)

    # --- closing -----------------------------------------------------------------------------

    def _close(self) -> None:
        if self._state in (TlsState.LOCAL_CLOSED, TlsState.CLOSED):
            return
        if self._state is TlsState.HANDSHAKING:
            self._close_requested = True  # close_notify follows the handshake
            return
        self._send_close_notify()

    def _send_close_notify(self) -> None:
        # RFC 8446 §6.1: close_notify before our FIN; the peer may keep sending.
        self._conn.shutdown()
        remote_done = self._state is TlsState.REMOTE_CLOSED
        self._set_state(TlsState.CLOSED if remote_done else TlsState.LOCAL_CLOSED)

    def _peer_closed(self) -> list[TepEvent]:
        if self._state in (TlsState.REMOTE_CLOSED, TlsState.CLOSED):
            return []
        raise TruncationError(
            f"TCP FIN before the peer's TLS close_notify (RFC 8446 §6.1), state "
            f"{self._state.value}"
        )

    def _drain(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            try:
                chunks.append(self._conn.bio_read(_BIO_CHUNK))
            except SSL.WantReadError:
                return b"".join(chunks)


def _openssl_reasons(exc: SSL.Error) -> str:
    """The reason strings of OpenSSL's error queue, as pyOpenSSL packed them."""
    queue = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
    reasons = [str(entry[2]) for entry in queue if isinstance(entry, tuple) and len(entry) == 3]
    return "; ".join(r for r in reasons if r) or str(exc) or type(exc).__name__


def make_core(ctx: TepContext) -> TlsCore:
    """``TepSpec.factory`` for the TLS TEP."""
    return TlsCore(ctx)
