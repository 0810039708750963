"""tcpcrypt (RFC 8548) in the stream, the probe and the experiments (registered at import).

Importing this module (testbed/apps/transport.py does) registers the four tcpcrypt TEPs (0x21
P-256, 0x22 P-521, 0x23 X25519, 0x24 X448) with the TEP registry, ``HOST_PROVIDER`` as their
stream provider, and these protocol arms:

    tcpcrypt                  all four TEPs, X25519 preferred, then X448, P-256, P-521; a fresh
                              key exchange (Init1/Init2) on every connection, nothing cached.
    tcpcrypt-resume           X25519; the first connection of a client process is fresh, each
                              later one resumes the session before it (§3.5, ss[i] ratchet).
    tcpcrypt-<curve>[-resume] the same with one curve: x25519, x448, p256, p521
                              (``tcpinc probe --proto tcpcrypt-p256 [--resume]``).

Records of these arms carry ``resumed`` (the session ID's first byte has v = 1, §3.4, §3.5),
``resume_nonce_len`` and ``eno_option_bytes`` (the lengths of A's and B's SYN-form ENO options,
from the transcript, RFC 8547 §4.8) besides the stable probe keys; ``tep`` names the curve.

Theory of operation: resumption across two processes and two hooks (RFC 8548 §3.5)
-------------------------------------------------------------------------------------
Each host process keeps one ``HostCache`` (a thread-safe ``ResumptionCache``). After every
session the core caches ss[i+1] under the peer's name: ``ActivePeer`` (the server's address)
for sessions this host opened, ``PassivePeer`` (the client's address and our listener port) for
sessions it accepted. Each chain is therefore used for opens in one direction only, which §3.5
suggests to rule out crossed resumption SYNs.

Active opener: ``suboption_data`` takes the newest secret for the server (single use: it leaves
the cache whether or not the resumption works, §3.5 "lowest i not yet tried") and returns
resume[i]'s half and an 8-byte nonce for the SYN; the stream announces it to the hook with
``expect`` = the other half, so the hook ignores a SYN-ACK answer with another half and, the
TEP being the only one offered, disables ENO (§3.5). ``context_options`` hands the offer to the
core, which resumes if B answered with v = 1 and starts Init1 if B answered v = 0.

Passive opener: a listener's settings are fixed, so the cache pushes, whenever it stores a
``PassivePeer`` secret, a single-use *answer* to this host's hook over the control channel
(``HookClient.answer``: key = the half the client will send, data = our half and a fresh
nonce, ttl just below the cache lifetime) and withdraws it when the secret leaves the cache
(eviction, expiry). The hook answers a SYN naming that key with that data and every other SYN
with a bare TEP id (fresh key exchange, §3.5 "MUST NOT agree to resumption" otherwise). At
accept ``context_options`` takes the named secret; if it is gone the connection is reset with
an error saying so (the client is resuming and no fresh exchange can follow).

Option space (RFC 8547 §4.4, 40 bytes): Linux puts 20 bytes of options in SYNs and SYN-ACKs
(MSS 4, SACK-permitted 2, timestamps 10, NOP 1, window scale 3). The active opener's offer
``45 14 a3 <9-byte half> <8-byte nonce>`` is 20 bytes and fits exactly; the passive answer needs
a global suboption too (b = 1, RFC 8547 §4.2): 21 bytes. The identifier half cannot shrink (§3.5
Figs. 2, 3 fix 9 bytes), a shorter nonce would go below the default §3.5 requires when secret
reuse cannot be ruled out, and switching TCP timestamps off is a per-host sysctl that would
change every arm. So the hook drops the kernel's one NOP (it only pads window scale to a 4-byte
boundary; options may start on any octet, RFC 9293 §3.1) when, and only when, ENO does not fit
otherwise: the resumed SYN-ACK carries 19 + 21 = 40 option bytes. Cost: an unaligned window
scale option in that one segment and no option space left for anything else in it.

On the bpf datapath (testbed/eno/bpf) the answers go into the kernel program's answer map
instead, and the kernel, not a hook, writes the SYN-ACK: Linux gives a BPF program only the
20 option bytes its own options leave and cannot drop the NOP, so B's answer there carries a
7-byte nonce (``HookPublisher.data_room``): 20 + 20 option bytes. §3.5 allows 0..8 bytes and
asks for 8 by default where secret reuse cannot be ruled out; here a cached secret lives in
one process's memory, is taken once and never written out, so it cannot be reused, and A's
nonce stays 8 bytes (sn[i] = nonce_a | nonce_b has 15 random bytes). ``resume_nonce_len`` in
records is the configured length; ``eno_option_bytes`` shows what was sent.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from testbed import stream as eno_stream
from testbed.apps.registry import EnoConn, EnoTransport, register_transport
from testbed.apps.tcpcrypt_cache import (  # re-exported: the arm's cache lives there
    ANSWER_MARGIN,  # noqa: F401
    CACHE_ENTRIES,  # noqa: F401
    CACHE_LIFETIME,  # noqa: F401
    ActivePeer,
    HookPublisher,  # noqa: F401
    HostCache,
    PassivePeer,
)
from testbed.eno.control import Result
from testbed.errors import ConfigError
from testbed.teps import tcpcrypt
from testbed.teps.base import Role, TepSpec
from testbed.teps.tcpcrypt.constants import (
    DEFAULT_RESUME_NONCE_LEN,
    ENO_V_BIT,
    RESUME_HALF_LEN,
    TEPS,
    TepId,
)
from testbed.teps.tcpcrypt.errors import ResumptionError
from testbed.teps.tcpcrypt.keys import EphemeralKey, generate_ephemeral
from testbed.teps.tcpcrypt.options import (
    OPT_CACHE,
    OPT_CACHE_SECRETS,
    OPT_EPHEMERAL,
    OPT_FIRST_DATA,
    OPT_LOCAL_DATA,
    OPT_NONCE_LEN,
    OPT_PEER,
    OPT_PENDING,
    OPT_RESUME,
)
from testbed.teps.tcpcrypt.resumption import CachedSession

logger = logging.getLogger(__name__)
Addr = tuple[str, int]

# Default preference (RFC 8548 §5: X25519 REQUIRED, X448 RECOMMENDED, the NIST curves OPTIONAL).
PREFERENCE = tuple(TEPS[t].name for t in (TepId.X25519, TepId.X448, TepId.P256, TepId.P521))
CURVES = {name.removeprefix("tcpcrypt-"): name for name in PREFERENCE}
MAX_OFFERS = 1024  # resumption offers awaiting their connection's result, per process
SPARE_KEYS = 2  # role B key pairs a provider keeps made ahead per TEP, at most


@dataclass
class TcpcryptProvider:
    """The tcpcrypt TEPs' per-host state for the stream (``testbed.stream.TepProvider``).

    ``cache`` None: a fresh key exchange every time and nothing cached (the ``tcpcrypt`` arm).
    """

    cache: HostCache | None = None
    nonce_len: int = DEFAULT_RESUME_NONCE_LEN

    def __post_init__(self) -> None:
        self._offers: OrderedDict[bytes, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._spare_keys: dict[int, list[EphemeralKey]] = {}  # TEP id -> role B keys made ahead

    def prepare(self, spec: TepSpec) -> None:
        """Make role B's key pair for a later fresh exchange now, while the server waits for
        the connection (RFC 8548 §3.3: a fresh key per connection, made ahead of it; §8 asks
        that private keys be short-lived: one waits for the next connection at most)."""
        keys = self._spare_keys.setdefault(spec.tep_id, [])
        if len(keys) < SPARE_KEYS:
            keys.append(generate_ephemeral(spec.tep_id, os.urandom))

    def _spare_key(self, tep_id: int) -> dict[str, Any]:
        try:
            return {OPT_EPHEMERAL: self._spare_keys.get(tep_id, []).pop()}  # atomic
        except IndexError:
            return {}  # none made ahead: the core makes its own on Init1

    def _options(self, peer: Hashable) -> dict[str, Any]:
        if self.cache is None:
            return {OPT_RESUME: False, OPT_CACHE_SECRETS: False}
        return {OPT_CACHE: self.cache, OPT_PEER: peer, OPT_NONCE_LEN: self.nonce_len}

    def suboption_data(self, spec: TepSpec, *, active: bool, peer: Addr | None) -> bytes | None:
        """Active opener: a resumption offer for ``peer`` if a secret is cached (§3.5)."""
        if not active or self.cache is None or peer is None:
            return None  # passive answers go to the hook as they are cached (HostCache)
        options = self._options(ActivePeer(str(peer[0]), int(peer[1])))
        data = tcpcrypt.local_suboption_data(options, spec.tep_id, os.urandom, time.monotonic())
        if not data:
            return None
        with self._lock:
            self._offers[data] = options
            while len(self._offers) > MAX_OFFERS:  # offers whose SYN never left
                self._offers.popitem(last=False)
        return data

    def expected_peer_data(self, spec: TepSpec, data: bytes) -> bytes | None:
        """What B's answer to our offer ``data`` must start with: the other half (§3.5)."""
        with self._lock:
            options = self._offers.get(data)
        entry = options.get(OPT_PENDING) if options else None
        return entry.peer_half if isinstance(entry, CachedSession) else None

    def context_options(
        self, spec: TepSpec, *, role: Role, peer: Addr, result: Result
    ) -> dict[str, Any]:
        local = bytes.fromhex(result.local_data)
        if result.active:
            with self._lock:
                offered = self._offers.pop(local, None) if local else None
            if local and offered is None:
                raise ResumptionError("the SYN carried a resumption offer this process did "
                                      "not make (RFC 8548 §3.5)")
            return offered or self._options(ActivePeer(str(peer[0]), int(peer[1])))
        options = self._options(PassivePeer(str(peer[0]), int(peer[1]), int(result.local[1])))
        if local:
            options.update(self._accept(spec, local, result.peer_data_bytes))
        elif role is Role.B:
            options.update(self._spare_key(spec.tep_id))
        return options

    def early_options(self, spec: TepSpec, *, peer: Addr) -> dict[str, Any] | None:
        """Role A's options before the ENO result, for a fresh exchange only (Init1 does not
        depend on the transcript, which enters at ss0, RFC 8548 §3.3; testbed/earlytep.py).
        A resuming arm's start depends on its offer and B's answer: None."""
        return self._options(None) if self.cache is None else None

    def _accept(self, spec: TepSpec, local: bytes, peer_data: bytes) -> dict[str, Any]:
        """The hook answered the SYN with ``local``: take the secret it names (§3.5)."""
        if self.cache is None:
            raise ResumptionError("a resumption answer was sent, but this arm caches nothing")
        entry = self.cache.take_by_half(spec.tep_id, peer_data[:RESUME_HALF_LEN],
                                        time.monotonic())
        if entry is None or entry.own_half != local[:RESUME_HALF_LEN]:
            raise ResumptionError("the hook agreed to resume a session whose secret is no "
                                  "longer cached (RFC 8548 §3.5); connection reset")
        return {OPT_LOCAL_DATA: local, OPT_PENDING: entry}


HOST_CACHE = HostCache(HookPublisher())
HOST_PROVIDER = TcpcryptProvider(HOST_CACHE)
FRESH_PROVIDER = TcpcryptProvider(None)


class TcpcryptConn(EnoConn):
    """A stream of a tcpcrypt arm; its record says whether the session was resumed.
    ``deferred``: the server's cache, whose answers for this connection wait for
    ``answered`` (after the response) or the close. ``client``: the active opener's."""

    def __init__(self, stream: eno_stream.Stream, nonce_len: int | None,
                 request_in_tep: bool = False, deferred: HostCache | None = None,
                 client: bool = False) -> None:
        super().__init__(stream)
        self.info.extras = tcpcrypt_keys(stream.info, nonce_len)
        self.deferred = deferred
        self.client = client
        if request_in_tep:
            self._request_phases()

    @property
    def close_before_next(self) -> bool:
        """A resuming client's next SYN must not come before the server's end of stream: the
        server pushes the answer that SYN names after its response and before its end of
        stream (``answered``); a SYN that overtook the push gets a fresh exchange
        (RFC 8548 §3.5; testbed/apps/client.py waits for this close)."""
        return self.client and self.info.extras["resume_nonce_len"] is not None

    def answered(self) -> None:
        """The server's response is out: push the resumption answer (HostCache)."""
        if self.deferred is not None:
            self.deferred.publish_deferred()
            self.deferred = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.answered()

    def _request_phases(self) -> None:
        """The core sealed the request as soon as its keys existed (``first_data``): after
        Init2 was read (fresh), or at start, after the ENO result (resumed). That moment is
        the lower bound the capture analysis finds the request segment from."""
        phases, driver = self.info.phases, self.stream.tep_driver
        if self.info.extras["resumed"]:
            start = phases.get("eno_result")
        else:
            start = driver.first_read_at if driver is not None else None
        if start is not None:
            phases["request_from"] = start
        done = phases.get("tep_handshake_done")
        if done is not None:
            phases["request_sent"] = done


def tcpcrypt_keys(info: eno_stream.StreamInfo, nonce_len: int | None) -> dict[str, Any]:
    """The record keys of tcpcrypt arms (module docstring)."""
    sid = info.session_id
    return {
        # §3.4, §3.5: byte 0 is B's TEP byte, whose v bit is set exactly when resumed.
        "resumed": bool(sid and sid[0] & ENO_V_BIT),
        "resume_nonce_len": nonce_len,  # None: the arm never resumes
        "eno_option_bytes": eno_option_lengths(info.transcript),
    }


def eno_option_lengths(transcript: bytes) -> list[int] | None:
    """[A's, B's] SYN-form ENO option lengths; the transcript is A's option | B's (§4.8)."""
    if len(transcript) < 2 or transcript[1] >= len(transcript):
        return None
    first = transcript[1]
    return [first, len(transcript) - first]


@dataclass
class TcpcryptTransport(EnoTransport):
    """An ENO arm whose TEPs are tcpcrypt's, fresh or resuming."""

    resume: bool = False

    def provider(self) -> TcpcryptProvider:
        return HOST_PROVIDER if self.resume else FRESH_PROVIDER

    @property
    def nonce_len(self) -> int | None:
        return self.provider().nonce_len if self.resume else None

    def config(self) -> eno_stream.StreamConfig:
        providers: Mapping[str, eno_stream.TepProvider] = {n: self.provider() for n in self.teps}
        return eno_stream.StreamConfig(policy=eno_stream.Policy(self.policy), teps=self.teps,
                                       providers=providers)

    def connect(self, addr: Addr, timeout: float, first: bytes) -> tuple[TcpcryptConn, int]:
        """Open a stream; nothing of ``first`` rides on the SYN (RFC 8548 defines no SYN data,
        RFC 8547 §4.7). The core seals it as soon as its keys exist (``first_data``), so the
        request leaves from inside the handshake's last read instead of after connect()
        returned; after a fallback it is still to be sent."""
        config = self.config()
        if first:
            config = dataclasses.replace(config, tep_options={
                name: {**config.tep_options.get(name, {}), OPT_FIRST_DATA: first}
                for name in self.teps})
        stream = eno_stream.connect(addr, config, timeout=timeout)
        taken = stream.info.tep in self.teps and stream.info.session_id is not None
        conn = TcpcryptConn(stream, self.nonce_len, request_in_tep=bool(first) and taken,
                            client=True)
        return conn, len(first) if taken else 0

    def accept(self, sock: socket.socket, addr: Addr | None = None) -> TcpcryptConn:
        """Wrap an accepted socket; a resuming arm's answer for the next connection is
        pushed once the response left (``TcpcryptConn.answered``), not inside the handshake."""
        if self.listener is None:
            raise ConfigError("TcpcryptTransport.accept before listen")
        cache = self.provider().cache
        if cache is None:
            return TcpcryptConn(self.listener.wrap(sock, addr), self.nonce_len)
        cache.defer_answers()
        try:
            stream = self.listener.wrap(sock, addr)
        except BaseException:
            cache.publish_deferred()
            raise
        return TcpcryptConn(stream, self.nonce_len, deferred=cache)


def arm(name: str, teps: tuple[str, ...], resume: bool, policy: str = "opportunistic"
        ) -> TcpcryptTransport:
    curves = ", ".join(t.removeprefix("tcpcrypt-") for t in teps)
    what = "resumes the session before it (RFC 8548 §3.5)" if resume else "fresh key exchange"
    return TcpcryptTransport(name, teps, description=f"tcpcrypt ({curves}): {what}",
                             policy=policy, resume=resume)


def arms() -> dict[str, tuple[tuple[str, ...], bool]]:
    """Arm name -> (TEP names, most preferred first; resumes?)."""
    out = {"tcpcrypt": (PREFERENCE, False), "tcpcrypt-resume": ((PREFERENCE[0],), True)}
    for curve, tep in CURVES.items():
        out[f"tcpcrypt-{curve}"] = ((tep,), False)
        out[f"tcpcrypt-{curve}-resume"] = ((tep,), True)
    return out


def _register() -> None:
    tcpcrypt.register_all()
    for name in PREFERENCE:
        eno_stream.register_provider(name, HOST_PROVIDER)
    for name, (teps, resume) in arms().items():

        def factory(policy: str, name: str = name, teps: tuple[str, ...] = teps,
                    resume: bool = resume) -> TcpcryptTransport:
            return arm(name, teps, resume, policy)

        register_transport(name, arm(name, teps, resume), factory)


_register()
