"""What a TLS 1.2-only inspection box understands of a connection, as a pure follower.

Theory of operation
-------------------
The boxes that broke TLS 1.3 in 2016-2018 (Blue Coat SGOS behind Chrome 56, the Firefox
and Facebook measurements: docs/middlebox-evidence.md §2) parsed the handshake as TLS 1.2 and
gave up on anything else. ``Tls12Follower`` is that parser. It reads both byte streams
of one connection (already in order, see pktmodel.StreamCursor) as TLS records and walks
each direction through a transition table of the TLS 1.2 message flow (RFC 5246 section
7.3, Figure 1 full handshake, Figure 2 abbreviated handshake):

    client: EXPECT_CLIENT_HELLO -ClientHello-> CLIENT_FLIGHT
            CLIENT_FLIGHT -Certificate/ClientKeyExchange/CertificateVerify-> CLIENT_FLIGHT
            CLIENT_FLIGHT -ChangeCipherSpec-> OPAQUE
    server: EXPECT_SERVER_HELLO -ServerHello, new session-> SERVER_CERTS
            EXPECT_SERVER_HELLO -ServerHello echoing the client's session_id-> RESUMING
            SERVER_CERTS -Certificate/ServerKeyExchange/CertificateRequest/
                          CertificateStatus-> SERVER_CERTS
            SERVER_CERTS -ServerHelloDone-> SERVER_DONE
            SERVER_DONE / RESUMING -NewSessionTicket-> same state
            SERVER_DONE / RESUMING -ChangeCipherSpec-> OPAQUE

OPAQUE means "the peer now encrypts": the box cannot read further and lets everything
through. Alerts are allowed in every state. "Cannot parse" is exactly one of:

- a record whose content type is not 20..23, whose version is not 3.0..3.3 (0x0300 to
  0x0303), or whose length exceeds 2^14 + 2048 (RFC 5246 section 6.2.3);
- a ClientHello or ServerHello whose fields do not add up (lengths, an empty cipher-suite
  or compression list, extension block not consumed exactly), or a ServerHello version
  above 3.3 (a draft TLS 1.3 server: draft-18 sent 0x7f12 there);
- a handshake message, ChangeCipherSpec or application_data record that the table has no
  transition for in the current state.

Consequences, which the unit tests show on real OpenSSL bytes: TLS 1.2 (full and
resumed) passes; TLS 1.3 in middlebox compatibility mode (RFC 8446 appendix D.4: 32-byte
legacy_session_id echoed by the server, dummy ChangeCipherSpec right after ServerHello)
walks EXPECT_SERVER_HELLO -> RESUMING -> OPAQUE and passes; TLS 1.3 without it has an
empty session_id, so the ServerHello starts a full handshake, and the next record
(a ChangeCipherSpec before ServerHelloDone, or encrypted extensions as application_data)
has no transition: the flow is killed. Cipher suites and extensions are not judged: the
boxes that failed did so on the message flow, and judging suites would also kill the
compatibility mode that fixed them.
"""

from __future__ import annotations

import enum
import logging
import struct
from dataclasses import dataclass

log = logging.getLogger(__name__)

CT_CHANGE_CIPHER_SPEC, CT_ALERT, CT_HANDSHAKE, CT_APPLICATION_DATA = 20, 21, 22, 23
HS_HELLO_REQUEST, HS_CLIENT_HELLO, HS_SERVER_HELLO, HS_NEW_SESSION_TICKET = 0, 1, 2, 4
HS_CERTIFICATE, HS_SERVER_KEY_EXCHANGE, HS_CERTIFICATE_REQUEST = 11, 12, 13
HS_SERVER_HELLO_DONE, HS_CERTIFICATE_VERIFY, HS_CLIENT_KEY_EXCHANGE = 14, 15, 16
HS_CERTIFICATE_STATUS = 22
MAX_RECORD = (1 << 14) + 2048  # TLSCiphertext.length limit, RFC 5246 section 6.2.3
RECORD_HEADER = 5
HANDSHAKE_HEADER = 4


class TlsParseError(Exception):
    """The bytes are not TLS 1.2 as the box understands it; the message says why."""


class State(enum.Enum):
    EXPECT_CLIENT_HELLO = "expect_client_hello"
    CLIENT_FLIGHT = "client_flight"
    EXPECT_SERVER_HELLO = "expect_server_hello"
    SERVER_CERTS = "server_certs"
    SERVER_DONE = "server_done"
    RESUMING = "resuming"
    OPAQUE = "opaque"


# Events are ("handshake", type), ("ccs", 0) or the two ServerHello outcomes.
Event = tuple[str, int]
SERVER_HELLO_NEW: Event = ("server_hello", 0)
SERVER_HELLO_RESUMED: Event = ("server_hello", 1)
CCS: Event = ("ccs", 0)


def _hs(kind: int) -> Event:
    return ("handshake", kind)


TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.EXPECT_CLIENT_HELLO, _hs(HS_CLIENT_HELLO)): State.CLIENT_FLIGHT,
    (State.CLIENT_FLIGHT, _hs(HS_CERTIFICATE)): State.CLIENT_FLIGHT,
    (State.CLIENT_FLIGHT, _hs(HS_CLIENT_KEY_EXCHANGE)): State.CLIENT_FLIGHT,
    (State.CLIENT_FLIGHT, _hs(HS_CERTIFICATE_VERIFY)): State.CLIENT_FLIGHT,
    (State.CLIENT_FLIGHT, CCS): State.OPAQUE,
    (State.EXPECT_SERVER_HELLO, _hs(HS_HELLO_REQUEST)): State.EXPECT_SERVER_HELLO,
    (State.EXPECT_SERVER_HELLO, SERVER_HELLO_NEW): State.SERVER_CERTS,
    (State.EXPECT_SERVER_HELLO, SERVER_HELLO_RESUMED): State.RESUMING,
    (State.SERVER_CERTS, _hs(HS_CERTIFICATE)): State.SERVER_CERTS,
    (State.SERVER_CERTS, _hs(HS_SERVER_KEY_EXCHANGE)): State.SERVER_CERTS,
    (State.SERVER_CERTS, _hs(HS_CERTIFICATE_REQUEST)): State.SERVER_CERTS,
    (State.SERVER_CERTS, _hs(HS_CERTIFICATE_STATUS)): State.SERVER_CERTS,
    (State.SERVER_CERTS, _hs(HS_SERVER_HELLO_DONE)): State.SERVER_DONE,
    (State.SERVER_DONE, _hs(HS_NEW_SESSION_TICKET)): State.SERVER_DONE,
    (State.SERVER_DONE, CCS): State.OPAQUE,
    (State.RESUMING, _hs(HS_NEW_SESSION_TICKET)): State.RESUMING,
    (State.RESUMING, CCS): State.OPAQUE,
}


def looks_like_client_hello(first: bytes) -> bool:
    """The 6-byte test a port-443 DPI box applies to a flow's first client bytes.

    Content type 22 (handshake), record version 3.1..3.3, handshake type 1 (ClientHello);
    RFC 8446 section 5.1 keeps exactly these bytes for TLS 1.3 ClientHellos.
    """
    return (len(first) >= 6 and first[0] == CT_HANDSHAKE and first[1] == 3
            and 1 <= first[2] <= 3 and first[5] == HS_CLIENT_HELLO)


class _Reader:
    """Bounds-checked reads over one message body."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise TlsParseError(f"{self.what} truncated at byte {self.pos} (+{n})")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, length_bytes: int) -> bytes:
        return self.take(self.uint(length_bytes))

    def extensions(self) -> None:
        """The optional extension block must be consumed exactly (RFC 5246 section 7.4.1.4)."""
        if self.pos == len(self.data):
            return
        block = _Reader(self.vector(2), f"{self.what} extensions")
        while block.pos < len(block.data):
            block.take(2)
            block.vector(2)
        if self.pos != len(self.data):
            raise TlsParseError(f"{self.what}: {len(self.data) - self.pos} bytes after "
                                "the extensions")


def parse_client_hello(body: bytes) -> bytes:
    """Check a ClientHello's structure; return its session_id (RFC 5246 section 7.4.1.2)."""
    r = _Reader(body, "ClientHello")
    major, _minor = r.take(2)
    if major != 3:
        raise TlsParseError(f"ClientHello version major {major} is not 3")
    r.take(32)
    session_id = r.vector(1)
    if len(session_id) > 32:
        raise TlsParseError(f"ClientHello session_id of {len(session_id)} bytes")
    suites = r.vector(2)
    if not suites or len(suites) % 2:
        raise TlsParseError(f"ClientHello cipher_suites of {len(suites)} bytes")
    if not r.vector(1):
        raise TlsParseError("ClientHello without compression methods")
    r.extensions()
    return session_id


def parse_server_hello(body: bytes) -> bytes:
    """Check a ServerHello's structure and 1.2 version; return its session_id."""
    r = _Reader(body, "ServerHello")
    version = r.uint(2)
    if not 0x0300 <= version <= 0x0303:
        raise TlsParseError(f"ServerHello version 0x{version:04x} is not TLS 1.2 or older")
    r.take(32)
    session_id = r.vector(1)
    if len(session_id) > 32:
        raise TlsParseError(f"ServerHello session_id of {len(session_id)} bytes")
    r.take(2)  # cipher_suite: not judged (see the module docstring)
    r.take(1)  # compression_method
    r.extensions()
    return session_id


@dataclass
class _Side:
    state: State
    records: bytearray
    handshake: bytearray


class Tls12Follower:
    """Both directions of one connection; ``feed`` raises TlsParseError on the first
    thing a TLS 1.2-only box cannot follow. After that the follower refuses input."""

    def __init__(self) -> None:
        self.client = _Side(State.EXPECT_CLIENT_HELLO, bytearray(), bytearray())
        self.server = _Side(State.EXPECT_SERVER_HELLO, bytearray(), bytearray())
        self.offered_session_id = b""
        self.error: str | None = None

    @property
    def opaque(self) -> bool:
        return self.client.state is State.OPAQUE and self.server.state is State.OPAQUE

    def feed(self, from_client: bool, data: bytes) -> None:
        if self.error is not None:
            raise TlsParseError(f"follower already failed: {self.error}")
        side = self.client if from_client else self.server
        if side.state is State.OPAQUE:
            return
        side.records += data
        try:
            self._records(side, from_client)
        except TlsParseError as err:
            self.error = f"{'client' if from_client else 'server'}: {err}"
            raise TlsParseError(self.error) from None

    def _records(self, side: _Side, from_client: bool) -> None:
        buf = side.records
        while len(buf) >= RECORD_HEADER and side.state is not State.OPAQUE:
            ctype, major, minor, length = struct.unpack("!BBBH", buf[:RECORD_HEADER])
            if ctype not in (CT_CHANGE_CIPHER_SPEC, CT_ALERT, CT_HANDSHAKE,
                             CT_APPLICATION_DATA):
                raise TlsParseError(f"record content type {ctype} in {side.state.value}")
            if major != 3 or minor > 3:
                raise TlsParseError(f"record version {major}.{minor}")
            if length > MAX_RECORD:
                raise TlsParseError(f"record length {length} > {MAX_RECORD}")
            if len(buf) < RECORD_HEADER + length:
                return  # wait for the rest of the record
            body = bytes(buf[RECORD_HEADER:RECORD_HEADER + length])
            del buf[:RECORD_HEADER + length]
            self._record(side, from_client, ctype, body)
        if side.state is State.OPAQUE:
            buf.clear()

    def _record(self, side: _Side, from_client: bool, ctype: int, body: bytes) -> None:
        if ctype == CT_ALERT:
            return
        if ctype == CT_APPLICATION_DATA:
            raise TlsParseError(f"application_data before ChangeCipherSpec in "
                                f"{side.state.value}")
        if ctype == CT_CHANGE_CIPHER_SPEC:
            if body != b"\x01":
                raise TlsParseError(f"ChangeCipherSpec body {body.hex()}")
            if side.handshake:
                raise TlsParseError("ChangeCipherSpec inside a handshake message")
            self._step(side, CCS)
            return
        side.handshake += body
        while len(side.handshake) >= HANDSHAKE_HEADER and side.state is not State.OPAQUE:
            kind = side.handshake[0]
            length = int.from_bytes(side.handshake[1:4], "big")
            if len(side.handshake) < HANDSHAKE_HEADER + length:
                return
            msg = bytes(side.handshake[HANDSHAKE_HEADER:HANDSHAKE_HEADER + length])
            del side.handshake[:HANDSHAKE_HEADER + length]
            self._step(side, self._event(from_client, kind, msg))

    def _event(self, from_client: bool, kind: int, msg: bytes) -> Event:
        if from_client and kind == HS_CLIENT_HELLO:
            self.offered_session_id = parse_client_hello(msg)
        if not from_client and kind == HS_SERVER_HELLO:
            echoed = parse_server_hello(msg)
            resumed = bool(echoed) and echoed == self.offered_session_id
            return SERVER_HELLO_RESUMED if resumed else SERVER_HELLO_NEW
        return _hs(kind)

    @staticmethod
    def _step(side: _Side, event: Event) -> None:
        new = TRANSITIONS.get((side.state, event))
        if new is None:
            name = "ChangeCipherSpec" if event == CCS else f"{event[0]} type {event[1]}"
            raise TlsParseError(f"unexpected {name} in {side.state.value}")
        if new is not side.state:
            log.debug("tls12 follower %s -> %s", side.state.value, new.value)
            side.state = new
