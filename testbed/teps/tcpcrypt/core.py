"""TcpcryptCore: a sans-IO tcpcrypt endpoint (RFC 8548) behind the TepCore interface.

Theory of operation
-------------------
The stream layer creates a core once TCP-ENO has negotiated one of the four tcpcrypt TEPs, with
the ENO role and transcript (RFC 8547 §4.8). ``start()`` begins: role A queues Init1, role B
waits for it and answers with Init2, and a resumed session (RFC 8548 §3.5) has keys at once.
From then on the byte stream each way is Init message (fresh sessions only) followed by
encryption frames (§3.6, §4.2), whose AEAD nonce is the frame's offset in that stream XOR the
nonce randomizer. Received bytes are buffered until a whole Init message or frame is there;
only authenticated data ever leaves the core. The states and their transition table are in
state.py; ``_transition`` is the one place the state changes.

Randomness is drawn from ``TepContext.random`` in a fixed order, so tests can script it:
role A at ``start()``: N_A (32 bytes), then its private key; role B on Init1: N_B (32 bytes),
then its private key unless ``tcpcrypt.ephemeral`` gave one. Private keys take 32 (X25519), 56
(X448), 40 (P-256) or 74 (P-521) bytes.
``options.local_suboption_data`` draws the resumption nonce when it builds the SYN.

TepContext.options keys used by tcpcrypt (see options.py; other ``tcpcrypt.*`` keys are refused)
------------------------------------------------------------------------------------------------
``tcpcrypt.cache``          ResumptionCache shared by this host's connections; None (default)
                            turns resumption and caching off.
``tcpcrypt.peer``           hashable name of the peer host (address...): where the next secret
                            is cached and what an offer is looked up by. None: nothing cached.
``tcpcrypt.ciphers``        AEAD ids: role A's sym_cipher_list, role B's preference order
                            (§3.3). Default AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305.
``tcpcrypt.resume``         False: neither offer nor accept resumption (§3.5 policy 1).
``tcpcrypt.cache_secrets``  False: cache no secret from this connection (§3.5 policy 2).
``tcpcrypt.nonce_len``      resumption nonce length, 0..8, default 8 (§3.5).
``tcpcrypt.chunk_size``     largest application chunk per frame (default 16384, at most 65518).
``tcpcrypt.first_data``     role A only: application bytes sealed as soon as the keys exist
                            (after Init2, §3.3; at start when resuming, §3.5), so they leave
                            with no further call; ``send_data`` before that is still refused.
``tcpcrypt.ephemeral``      role B only: a key pair made ahead for this one connection (§3.3).
``tcpcrypt.local_suboption_data``, ``tcpcrypt.pending_session``
                            written by ``options.local_suboption_data()`` when it builds our
                            SYN/SYN-ACK suboption; read here to decide on resumption.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from testbed.teps import machine
from testbed.teps.base import (
    DataReceived,
    EndOfStream,
    HandshakeComplete,
    KeyUpdated,
    LocalProtocolError,
    RemoteProtocolError,
    Role,
    TepContext,
    TepEvent,
    TepStateError,
    TruncationError,
)

from .constants import (
    ENO_V_BIT,
    INIT1_MAGIC,
    INIT2_MAGIC,
    MAX_URGENT_CHUNK,
    N_A_LEN,
    N_B_LEN,
    RESUME_HALF_LEN,
)
from .errors import CipherError
from .keys import (
    EphemeralKey,
    KeyChain,
    SessionKeys,
    derive_session,
    generate_ephemeral,
    key_agreement,
    prk,
    tep_params,
)
from .options import TcpcryptOptions
from .resumption import CachedSession, match_resumption, split_suboption_data
from .state import CAN_RECEIVE_FRAMES, CAN_SEND, KEYED, State, Trigger, next_state
from .wire import (
    Init1,
    Init2,
    Plaintext,
    frame_length,
    init1_min_len,
    init2_min_len,
    init_length,
    open_frame,
    pull_frame,
    pull_init1,
    pull_init2,
    push_init1,
    push_init2,
    seal_frame,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UrgentData(TepEvent):
    """A frame carried URGp (§3.7): ``last_index`` is the index, in the peer's application
    byte stream, of the last urgent byte (the frame's first data byte + the urgent field)."""

    last_index: int


class TcpcryptCore:
    """One end of one tcpcrypt connection (RFC 8548), sans-IO."""

    def __init__(self, context: TepContext, tep_id: int) -> None:
        self._boundary = machine.Boundary(failed=self._refusal, enter_error=self._enter_error)
        self._ctx = context
        self._params = tep_params(tep_id)
        self._opts = TcpcryptOptions.from_dict(context.options)
        self._opts.check_role(context.role is Role.A, tep_id)
        self._state = State.IDLE
        self._now = context.now
        self._in = bytearray()
        self._out: list[bytes] = []  # messages and frames to send, joined once when taken
        self._events: list[TepEvent] = []
        self._send_offset = 0  # offset of our next frame in our stream (§3.6)
        self._recv_offset = 0  # bytes of the peer's stream consumed so far (§3.6)
        self._app_received = 0  # application bytes delivered, for URGp (§3.7)
        self._eph: EphemeralKey | None = None
        self._init1 = b""  # Init1 as transmitted: it enters PRK (§3.3)
        self._n_a = b""
        self._send: KeyChain | None = None
        self._recv: KeyChain | None = None
        self._rekey_next = False  # next frame opens a new local generation (§3.8)
        self._session_id: bytes | None = None
        self._aead_id: int | None = None
        self._resumed = False
        self._stored: CachedSession | None = None
        # Role B's ss[i+1] when it would replace a cached one: cached once A's first frame
        # authenticates (see _install).
        self._unconfirmed: dict[str, Any] | None = None

    # -- read-only views -------------------------------------------------------------------

    @property
    def tep_id(self) -> int:
        return int(self._params.tep_id)

    @property
    def state(self) -> State:
        return self._state

    @property
    def handshake_complete(self) -> bool:
        return self._session_id is not None

    @property
    def session_id(self) -> bytes | None:
        """TEP byte (v = 1 if resumed) and 32 bytes (§3.4); None until keys exist."""
        return self._session_id

    @property
    def resumed(self) -> bool:
        return self._resumed

    @property
    def aead_id(self) -> int | None:
        return self._aead_id

    @property
    def generations(self) -> tuple[int, int]:
        """(local, remote) key generations (§3.8)."""
        if self._send is None or self._recv is None:
            return (0, 0)
        return (self._send.generation, self._recv.generation)

    def key_log(self) -> tuple[int, tuple[int, bytes, bytes], tuple[int, bytes, bytes]] | None:
        """For analysis key logs only (testbed/keylog.py): the AEAD id and, for sending and
        receiving, (generation, key, nonce randomizer) of the current traffic key (§3.6,
        §3.8); None before the keys exist."""
        if self._send is None or self._recv is None or self._aead_id is None:
            return None
        send, recv = self._send, self._recv
        return (self._aead_id, (send.generation, send.key.key, send.key.nr),
                (recv.generation, recv.key.key, recv.key.nr))

    # -- the state machine and error discipline -------------------------------------------

    def _transition(self, trigger: Trigger) -> None:
        new = next_state(self._state, trigger)
        logger.debug("tcpcrypt %s %s: %s -> %s", self._params.name, self._ctx.role.value,
                     self._state.value, new.value)
        self._state = new

    def _guard(self) -> AbstractContextManager[None]:
        """Refuse calls after an error; turn any failure into the ERROR state."""
        return self._boundary

    def _refusal(self) -> TepStateError | None:
        failed = self._state is State.ERROR
        return TepStateError("tcpcrypt core is in the error state") if failed else None

    def _enter_error(self) -> None:
        self._transition(Trigger.FAIL)
        self._wipe()

    def _wipe(self) -> None:
        """Forget keys and buffered bytes (nothing unauthenticated may leak out later)."""
        self._send = self._recv = None
        self._eph = None
        self._in.clear()
        self._out.clear()
        self._events.clear()

    # -- TepCore -------------------------------------------------------------------------

    def start(self, now: float) -> list[TepEvent]:
        """Fresh: Init1 queued (role A) or awaited (role B), no event. Resumed (§3.5): the
        keys exist at once and HandshakeComplete(resumed=True) is returned here."""
        with self._guard():
            self._now = now
            pending = match_resumption(
                self._opts.pending_session,
                self.tep_id,
                self._opts.local_suboption_data,
                self._ctx.peer_suboption_data,
            )
            if pending is not None:
                self._start_resumed(pending)
            elif self._ctx.role is Role.A:
                self._transition(Trigger.START_A)
                self._send_init1()
            else:
                self._transition(Trigger.START_B)
            events, self._events = self._events, []
            return events

    def receive_data(self, data: bytes, now: float) -> list[TepEvent]:
        with self._guard():
            if self._state is State.IDLE:
                raise LocalProtocolError("receive_data() before start()")
            self._now = now
            self._in += data
            events, self._events = self._events, []
            while self._step(events):
                pass
            return events

    def send_data(self, data: bytes, urgent: int | None = None) -> None:
        """Protect ``data``; ``urgent`` is the index in ``data`` of the last urgent byte."""
        with self._guard():
            if self._state not in CAN_SEND:
                raise LocalProtocolError(f"cannot send data in state {self._state.value}")
            if urgent is not None and not 0 <= urgent < len(data):
                raise LocalProtocolError("urgent index outside the data")
            self._seal(data, urgent)

    def _seal(self, data: bytes, urgent: int | None = None) -> None:
        """Queue ``data`` as frames of at most ``chunk_size`` bytes (§3.6)."""
        size = self._opts.chunk_size
        if urgent is not None:
            size = min(size, MAX_URGENT_CHUNK)
        for start in range(0, len(data), size):
            chunk = data[start : start + size]
            mark = urgent - start if urgent is not None and 0 <= urgent - start < size else None
            self._emit(Plaintext(bytes(chunk), urgent=mark))

    def close(self) -> None:
        """Queue the authenticated end of stream: an empty frame with FINp (§3.7)."""
        with self._guard():
            self._transition(Trigger.LOCAL_FIN)
            self._emit(Plaintext(b"", fin=True))

    def peer_closed(self) -> list[TepEvent]:
        """TCP FIN arrived: fine after the peer's FINp frame, a truncation otherwise (§3.7)."""
        with self._guard():
            if self._state in (State.PEER_CLOSED, State.CLOSED):
                return []
            partial = f" ({len(self._in)} bytes of an unfinished message)" if self._in else ""
            raise TruncationError(f"TCP FIN without a FINp frame{partial} (RFC 8548 §3.7)")

    def data_to_send(self) -> bytes:
        with self._guard():
            out = b"".join(self._out)  # a single frame is returned as it is, not copied
            self._out.clear()
            return out

    # -- beyond TepCore: rekeying and cache control ------------------------------------

    def rekey(self) -> list[TepEvent]:
        """Initiate rekeying (§3.8) and send a frame at once, as a keep-alive probe (§3.9).

        Returns ``[KeyUpdated("send")]``, or ``[]`` when our own rekey is still unanswered:
        §3.8 forbids a second empty-frame rekey while the remote generation lags.
        """
        with self._guard():
            if self._state not in CAN_SEND or self._send is None or self._recv is None:
                raise LocalProtocolError(f"cannot rekey in state {self._state.value}")
            if self._send.generation > self._recv.generation:
                return []
            self._send.advance()
            self._rekey_next = True
            self._emit(Plaintext(b""))
            return [KeyUpdated("send")]

    def flush_cache(self) -> bool:
        """Erase the cache entry this connection produced (§3.5 flush control)."""
        with self._guard():
            cache, entry, self._stored = self._opts.cache, self._stored, None
            return cache is not None and entry is not None and cache.discard_entry(entry)

    # -- handshake ------------------------------------------------------------------------

    def _send_init1(self) -> None:
        """Role A: Init1 = magic, our cipher list, N_A, Pub_A (§3.3, §4.1)."""
        self._n_a = self._random(N_A_LEN)
        self._eph = generate_ephemeral(self.tep_id, self._ctx.random)
        self._init1 = push_init1(Init1(self._opts.ciphers, self._n_a, self._eph.public))
        self._out.append(self._init1)
        self._send_offset = len(self._init1)  # the first frame follows Init1 (§3.6)

    def _on_init1(self, raw: bytes, events: list[TepEvent]) -> None:
        """Role B: choose the AEAD, answer with Init2, derive keys (§3.3)."""
        msg = pull_init1(raw, self._params)
        cipher = next((c for c in self._opts.ciphers if c in msg.ciphers), None)
        if cipher is None:
            offered = ", ".join(f"{c:#06x}" for c in msg.ciphers)
            raise CipherError(f"no acceptable AEAD among those offered ({offered})")
        nonce = self._random(N_B_LEN)
        eph = self._opts.ephemeral or generate_ephemeral(self.tep_id, self._ctx.random)
        es = key_agreement(eph, msg.pub)  # validates Pub_A (§3.3, §5)
        init2 = push_init2(Init2(cipher, nonce, eph.public))
        ss0 = prk(self._ctx.transcript, raw, init2, es, msg.nonce)
        self._out.append(init2)
        self._send_offset = len(init2)
        keys = derive_session(ss0, b"", cipher, self.tep_id, original_a=False)
        self._install(keys, cipher, index=0, original_a=False, peer=self._opts.peer)
        self._transition(Trigger.INIT1_RECEIVED)
        events.append(HandshakeComplete(self._require_sid()))

    def _on_init2(self, raw: bytes, events: list[TepEvent]) -> None:
        """Role A: check B's choice, derive keys (§3.3)."""
        msg = pull_init2(raw, self._params)
        if msg.cipher not in self._opts.ciphers:
            raise CipherError(f"Init2 selects {msg.cipher:#06x}, which Init1 did not offer")
        if self._eph is None:
            raise LocalProtocolError("Init2 handled without our ephemeral key")
        es = key_agreement(self._eph, msg.pub)
        ss0 = prk(self._ctx.transcript, self._init1, raw, es, self._n_a)
        self._eph = None  # the private key is no longer needed (§3.3)
        keys = derive_session(ss0, b"", msg.cipher, self.tep_id, original_a=True)
        self._install(keys, msg.cipher, index=0, original_a=True, peer=self._opts.peer)
        self._transition(Trigger.INIT2_RECEIVED)
        events.append(HandshakeComplete(self._require_sid()))
        self._seal(self._opts.first_data)

    def _start_resumed(self, entry: CachedSession) -> None:
        """Keys from the cached ss[i] and sn[i] = nonce_a | nonce_b (§3.5)."""
        own_nonce = self._opts.local_suboption_data[RESUME_HALF_LEN:]
        _, peer_nonce = split_suboption_data(self._ctx.peer_suboption_data)
        sn = entry.session_nonce(own_nonce, peer_nonce)
        # The session ID starts with B's TEP byte, which has v = 1 when resuming (§3.4, §3.5).
        tep_byte = self.tep_id | ENO_V_BIT
        keys = derive_session(entry.secret, sn, entry.aead_id, tep_byte, entry.original_a)
        peer = self._opts.peer if self._opts.peer is not None else entry.peer
        self._resumed = True
        self._install(keys, entry.aead_id, index=entry.index, original_a=entry.original_a,
                      peer=peer)
        self._transition(Trigger.START_RESUMED)
        self._events.append(HandshakeComplete(self._require_sid(), resumed=True))
        self._seal(self._opts.first_data)

    def _install(
        self,
        keys: SessionKeys,
        aead_id: int,
        *,
        index: int,
        original_a: bool,
        peer: Hashable | None,
    ) -> None:
        self._session_id = keys.session_id
        self._send, self._recv = keys.send, keys.receive
        self._aead_id = aead_id
        cache = self._opts.cache
        if cache is None or not self._opts.cache_secrets or peer is None:
            return
        # §3.5: cache ss[i+1] (ss[i] itself is not kept anywhere). Where role B already holds
        # a secret for this peer, it waits until A has shown it holds the new session's keys
        # (A's first frame authenticates): a replayed copy of A's SYN and Init1 completes B's
        # side of a fresh exchange that A never joins, and caching that session's secret would
        # replace the one A will resume with (one chain per peer).
        entry: dict[str, Any] = {"peer": peer, "tep_id": self.tep_id,
                                 "secret": keys.next_secret, "index": index + 1,
                                 "original_a": original_a, "aead_id": aead_id}
        if self._ctx.role is Role.B and cache.peek(peer) is not None:
            self._unconfirmed = entry
            return
        self._stored = cache.store(now=self._now, **entry)

    def _confirm(self) -> None:
        """A frame of A's authenticated: B's pending secret may enter the cache (§3.5)."""
        entry, self._unconfirmed = self._unconfirmed, None
        if entry is not None and self._opts.cache is not None:
            self._stored = self._opts.cache.store(now=self._now, **entry)

    # -- the receive loop ---------------------------------------------------------------

    def _step(self, events: list[TepEvent]) -> bool:
        """Consume one whole message from the input if there is one; False otherwise."""
        if self._state is State.WAIT_INIT1:
            raw = self._take(init_length(self._in, INIT1_MAGIC, init1_min_len(self._params)))
            if raw is not None:
                self._on_init1(raw, events)
        elif self._state is State.WAIT_INIT2:
            raw = self._take(init_length(self._in, INIT2_MAGIC, init2_min_len(self._params)))
            if raw is not None:
                self._on_init2(raw, events)
        elif self._state in CAN_RECEIVE_FRAMES:
            raw = self._take(frame_length(self._in))
            if raw is not None:
                self._on_frame(raw, events)
        else:
            if self._in:
                raise RemoteProtocolError("bytes after the FINp frame (RFC 8548 §3.7)")
            raw = None
        return raw is not None and bool(self._in)

    def _take(self, length: int | None) -> bytes | None:
        if length is None or len(self._in) < length:
            return None
        with memoryview(self._in) as view:  # one copy, not a bytearray slice and then bytes
            raw = bytes(view[:length])
        del self._in[:length]
        self._recv_offset += length  # Init messages count too: offsets are stream offsets
        return raw

    def _on_frame(self, raw: bytes, events: list[TepEvent]) -> None:
        """Authenticate and deliver one frame (§3.6–§3.8)."""
        if self._recv is None or self._send is None:
            raise LocalProtocolError("frame handled without keys")
        frame = pull_frame(raw)
        offset = self._recv_offset - len(raw)  # where this frame began in the peer's stream
        if frame.rekey:
            self._recv.advance()  # the frame is under the next remote generation (§3.8)
        plain = open_frame(self._recv.key, offset, frame)
        self._confirm()
        if frame.rekey:
            events.append(KeyUpdated("receive"))
        if plain.urgent is not None:
            events.append(UrgentData(self._app_received + plain.urgent))
        if plain.data:
            events.append(DataReceived(plain.data))
            self._app_received += len(plain.data)
        if self._recv.generation > self._send.generation:
            self._catch_up(events)
        if plain.fin:
            self._transition(Trigger.PEER_FIN)
            events.append(EndOfStream())

    def _catch_up(self, events: list[TepEvent]) -> None:
        """§3.8: follow the peer's generation, and answer at once unless our FIN is sent."""
        if self._recv is None or self._send is None:
            raise LocalProtocolError("rekey handled without keys")
        while self._send.generation < self._recv.generation:
            self._send.advance()
            self._rekey_next = True
            events.append(KeyUpdated("send"))
        if self._state in CAN_SEND:
            self._emit(Plaintext(b""))

    # -- the send side ------------------------------------------------------------------

    def _emit(self, plain: Plaintext) -> None:
        """Seal one frame at the current offset and queue it (§3.6)."""
        if self._send is None:
            raise LocalProtocolError("no traffic keys yet")
        frame = seal_frame(self._send.key, self._send_offset, plain, rekey=self._rekey_next)
        self._rekey_next = False  # only a generation's first frame has rekey = 1 (§3.8)
        self._out.append(frame)
        self._send_offset += len(frame)

    def _random(self, n: int) -> bytes:
        out = self._ctx.random(n)
        if len(out) != n:
            raise LocalProtocolError(f"random() gave {len(out)} bytes, {n} requested")
        return out

    def _require_sid(self) -> bytes:
        if self._session_id is None:
            raise LocalProtocolError("no session ID yet")
        return self._session_id

    def __repr__(self) -> str:
        keyed = "keyed" if self._state in KEYED else "unkeyed"
        role, state = self._ctx.role.value, self._state.value
        return f"<TcpcryptCore {self._params.name} {role} {state} {keyed}>"
