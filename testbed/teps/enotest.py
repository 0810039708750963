"""``eno-test``: a TEST-ONLY TEP on TEP id 0x20, "Experimental Use" (RFC 8547 §11).

It proves the plumbing (ENO hook -> stream -> TEP core -> application) before the real TEPs
are wired into the probe. It is NOT encryption and claims nothing of the kind:

* Handshake, role A speaks first: A sends HELLO (magic, nonce_a); B answers REPLY (magic,
  nonce_b, confirm_b); A sends CONFIRM (magic, confirm_a). The session ID is
  ``0x20 | SHA-256(label | transcript | nonce_a | nonce_b)``, 33 bytes as RFC 8547 §5.1 asks,
  and both confirmations are hashes of it, so SYN-form options altered in transit make the
  handshake fail (the §4.8 duty). Nothing is secret: an eavesdropper sees both nonces and the
  transcript and computes the same ID.
* Data: frames ``type(1) | length(2) | payload | tag(8)`` with ``tag = SHA-256(key | sender
  role | frame number | type | length | payload)[:8]`` and a key derived from the session ID.
  The tag catches accidental (or test-injected) corruption and the END frame catches truncation,
  which is what the stream's abort path needs to be exercised; it is no MAC against anyone,
  because the key is computable from public values. The payload crosses the wire in clear.

``SPEC`` is registered with ``explicit_only=True`` and ``TEST_LABEL``: never offered unless
named, and the label travels with the name (stream ``tep_label``, probe JSON ``tep_label``).
Connections that negotiate it report ``encrypted = False`` and outcome ``plaintext``.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import struct

from testbed.teps import base, machine
from testbed.teps.base import (
    DataReceived,
    EndOfStream,
    HandshakeComplete,
    IntegrityError,
    LocalProtocolError,
    RemoteProtocolError,
    Role,
    TepContext,
    TepEvent,
    TepStateError,
    TruncationError,
)

logger = logging.getLogger(__name__)

TEP_ID = 0x20  # RFC 8547 §11 Table 3: Experimental Use
TEP_NAME = "eno-test"
TEST_LABEL = "TEST ONLY - not encryption"

MAGIC_HELLO, MAGIC_REPLY, MAGIC_CONFIRM = b"ENOTEST1", b"ENOTEST2", b"ENOTEST3"
NONCE_LEN = 16
CONFIRM_LEN = 16
TAG_LEN = 8
HELLO_LEN = len(MAGIC_HELLO) + NONCE_LEN
REPLY_LEN = len(MAGIC_REPLY) + NONCE_LEN + CONFIRM_LEN
CONFIRM_MSG_LEN = len(MAGIC_CONFIRM) + CONFIRM_LEN
FRAME_HEADER = struct.Struct("!BH")  # type, payload length
FRAME_DATA, FRAME_END = 0x01, 0x02
MAX_CHUNK = 16384
SID_LABEL = b"eno-test session id (not secret)"


class State(enum.Enum):
    IDLE = "idle"
    WAIT_HELLO = "wait-hello"  # role B
    WAIT_REPLY = "wait-reply"  # role A, HELLO sent
    WAIT_CONFIRM = "wait-confirm"  # role B, REPLY sent
    OPEN = "open"
    LOCAL_CLOSED = "local-closed"  # our END frame queued
    PEER_CLOSED = "peer-closed"  # the peer's END frame received
    CLOSED = "closed"
    ERROR = "error"


class Trigger(enum.Enum):
    START_A = "start-a"
    START_B = "start-b"
    HELLO = "hello"
    REPLY = "reply"
    CONFIRM = "confirm"
    LOCAL_END = "local-end"
    PEER_END = "peer-end"
    FAIL = "fail"


TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (State.IDLE, Trigger.START_A): State.WAIT_REPLY,
    (State.IDLE, Trigger.START_B): State.WAIT_HELLO,
    (State.WAIT_HELLO, Trigger.HELLO): State.WAIT_CONFIRM,
    (State.WAIT_REPLY, Trigger.REPLY): State.OPEN,
    (State.WAIT_CONFIRM, Trigger.CONFIRM): State.OPEN,
    (State.OPEN, Trigger.LOCAL_END): State.LOCAL_CLOSED,
    (State.OPEN, Trigger.PEER_END): State.PEER_CLOSED,
    (State.LOCAL_CLOSED, Trigger.PEER_END): State.CLOSED,
    (State.PEER_CLOSED, Trigger.LOCAL_END): State.CLOSED,
    **{(s, Trigger.FAIL): State.ERROR for s in State if s is not State.ERROR},
}
CAN_SEND = frozenset({State.OPEN, State.PEER_CLOSED})
CAN_RECEIVE_FRAMES = frozenset({State.OPEN, State.LOCAL_CLOSED})


def _confirm(session_id: bytes, role: Role) -> bytes:
    return hashlib.sha256(b"eno-test confirm " + role.value.encode() + session_id).digest()[
        :CONFIRM_LEN
    ]


class EnoTestCore:
    """One end of an eno-test connection (see the module docstring), sans-IO."""

    def __init__(self, context: TepContext) -> None:
        self._boundary = machine.Boundary(failed=self._refusal, enter_error=self._fail,
                                          catch=(RemoteProtocolError, LocalProtocolError))
        self._ctx = context
        self._state = State.IDLE
        self._in = bytearray()
        self._out = bytearray()
        self._nonce = b""
        self._session_id: bytes | None = None
        self._key = b""
        self._sent_frames = 0
        self._received_frames = 0

    @property
    def state(self) -> State:
        return self._state

    @property
    def handshake_complete(self) -> bool:
        return self._state not in (State.IDLE, State.WAIT_HELLO, State.WAIT_REPLY,
                                   State.WAIT_CONFIRM, State.ERROR)

    @property
    def session_id(self) -> bytes | None:
        return self._session_id

    def _transition(self, trigger: Trigger) -> None:
        new = machine.next_state(TRANSITIONS, self._state, trigger, LocalProtocolError)
        logger.debug("eno-test %s: %s -> %s", self._ctx.role.value, self._state.value, new.value)
        self._state = new

    def _fail(self) -> None:
        if self._state is not State.ERROR:
            self._transition(Trigger.FAIL)
        self._in.clear()
        self._out.clear()

    def _refusal(self) -> TepStateError | None:
        failed = self._state is State.ERROR
        return TepStateError("eno-test core is in the error state") if failed else None

    def _check_usable(self) -> None:
        refusal = self._refusal()
        if refusal is not None:
            raise refusal

    # -- TepCore -----------------------------------------------------------------------

    def start(self, now: float) -> list[TepEvent]:
        self._check_usable()
        self._nonce = self._ctx.random(NONCE_LEN)
        if self._ctx.role is Role.A:
            self._transition(Trigger.START_A)
            self._out += MAGIC_HELLO + self._nonce
        else:
            self._transition(Trigger.START_B)
        return []  # the handshake needs the peer's message

    def receive_data(self, data: bytes, now: float) -> list[TepEvent]:
        events: list[TepEvent] = []
        with self._boundary:
            self._in += data
            while self._step(events):
                pass
        return events

    def send_data(self, data: bytes) -> None:
        self._check_usable()
        if self._state not in CAN_SEND:
            raise LocalProtocolError(f"cannot send in state {self._state.value}")
        for i in range(0, len(data), MAX_CHUNK):
            self._out += self._frame(FRAME_DATA, data[i : i + MAX_CHUNK])

    def close(self) -> None:
        self._check_usable()
        if self._state in CAN_SEND:
            self._out += self._frame(FRAME_END, b"")
            self._transition(Trigger.LOCAL_END)

    def peer_closed(self) -> list[TepEvent]:
        self._check_usable()
        if self._state in (State.PEER_CLOSED, State.CLOSED):
            return []
        self._fail()
        raise TruncationError("TCP ended before the peer's END frame")

    def data_to_send(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    # -- messages --------------------------------------------------------------------

    def _take(self, size: int) -> bytes | None:
        if len(self._in) < size:
            return None
        chunk = bytes(self._in[:size])
        del self._in[:size]
        return chunk

    def _step(self, events: list[TepEvent]) -> bool:
        """Consume one message or frame from the input buffer; False when none is complete."""
        if self._state is State.WAIT_HELLO:
            return self._on_hello(self._take(HELLO_LEN))
        if self._state is State.WAIT_REPLY:
            return self._on_reply(self._take(REPLY_LEN), events)
        if self._state is State.WAIT_CONFIRM:
            return self._on_confirm(self._take(CONFIRM_MSG_LEN), events)
        if self._state in CAN_RECEIVE_FRAMES:
            return self._on_frame(events)
        if self._in:
            raise RemoteProtocolError(f"bytes after the peer's END frame ({len(self._in)})")
        return False

    def _derive(self, nonce_a: bytes, nonce_b: bytes) -> bytes:
        """Derive the session ID and frame key; returns the session ID."""
        digest = hashlib.sha256(SID_LABEL + self._ctx.transcript + nonce_a + nonce_b).digest()
        session_id = self._session_id = bytes((TEP_ID,)) + digest  # §5.1: TEP byte, 32 bytes
        self._key = hashlib.sha256(b"eno-test frame key " + session_id).digest()
        return session_id

    def _on_hello(self, msg: bytes | None) -> bool:
        if msg is None:
            return False
        if msg[: len(MAGIC_HELLO)] != MAGIC_HELLO:
            raise RemoteProtocolError("not an eno-test HELLO")
        session_id = self._derive(msg[len(MAGIC_HELLO) :], self._nonce)
        self._out += MAGIC_REPLY + self._nonce + _confirm(session_id, Role.B)
        self._transition(Trigger.HELLO)
        return True

    def _on_reply(self, msg: bytes | None, events: list[TepEvent]) -> bool:
        if msg is None:
            return False
        if msg[: len(MAGIC_REPLY)] != MAGIC_REPLY:
            raise RemoteProtocolError("not an eno-test REPLY")
        nonce_b = msg[len(MAGIC_REPLY) : len(MAGIC_REPLY) + NONCE_LEN]
        session_id = self._derive(self._nonce, nonce_b)
        if msg[-CONFIRM_LEN:] != _confirm(session_id, Role.B):
            raise IntegrityError("eno-test: peer computed another session ID (transcript?)")
        self._out += MAGIC_CONFIRM + _confirm(session_id, Role.A)
        self._transition(Trigger.REPLY)
        events.append(HandshakeComplete(session_id))
        return True

    def _on_confirm(self, msg: bytes | None, events: list[TepEvent]) -> bool:
        if msg is None:
            return False
        session_id = self._session_id
        if session_id is None:  # WAIT_CONFIRM is reached only after HELLO derived it
            raise LocalProtocolError("eno-test: CONFIRM awaited without a session ID")
        if msg[: len(MAGIC_CONFIRM)] != MAGIC_CONFIRM:
            raise RemoteProtocolError("not an eno-test CONFIRM")
        if msg[len(MAGIC_CONFIRM) :] != _confirm(session_id, Role.A):
            raise IntegrityError("eno-test: peer computed another session ID (transcript?)")
        self._transition(Trigger.CONFIRM)
        events.append(HandshakeComplete(session_id))
        return True

    def _tag(self, sender: Role, number: int, header: bytes, payload: bytes) -> bytes:
        material = self._key + sender.value.encode() + number.to_bytes(8, "big")
        return hashlib.sha256(material + header + payload).digest()[:TAG_LEN]

    def _frame(self, kind: int, payload: bytes) -> bytes:
        header = FRAME_HEADER.pack(kind, len(payload))
        tag = self._tag(self._ctx.role, self._sent_frames, header, payload)
        self._sent_frames += 1
        return header + payload + tag

    def _on_frame(self, events: list[TepEvent]) -> bool:
        if len(self._in) < FRAME_HEADER.size:
            return False
        kind, length = FRAME_HEADER.unpack_from(self._in)
        total = FRAME_HEADER.size + length + TAG_LEN
        if len(self._in) < total:
            return False
        frame = bytes(self._in[:total])
        del self._in[:total]
        header, payload = frame[: FRAME_HEADER.size], frame[FRAME_HEADER.size : -TAG_LEN]
        peer = Role.B if self._ctx.role is Role.A else Role.A
        if frame[-TAG_LEN:] != self._tag(peer, self._received_frames, header, payload):
            raise IntegrityError(f"eno-test: frame {self._received_frames} was altered")
        self._received_frames += 1
        if kind == FRAME_DATA:
            if payload:
                events.append(DataReceived(payload))
            return True
        if kind == FRAME_END and not payload:
            self._transition(Trigger.PEER_END)
            events.append(EndOfStream())
            return True
        raise RemoteProtocolError(f"eno-test: unknown frame type {kind}")


SPEC = base.TepSpec(
    tep_id=TEP_ID, name=TEP_NAME, standard=False, factory=EnoTestCore, label=TEST_LABEL,
    explicit_only=True,
)


def register() -> base.TepSpec:
    """Register the test TEP; calling it again is harmless."""
    existing = base.by_id(TEP_ID)
    if existing is SPEC:
        return SPEC
    return base.register(SPEC)
