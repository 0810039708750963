"""This host's tcpcrypt resumption cache and the answers it pushes to the ENO datapath.

testbed/apps/proto_tcpcrypt.py explains resumption across two processes and two hooks (RFC
8548 §3.5) and re-exports these names: ``HostCache`` caches ss[i+1] under ``ActivePeer`` or
``PassivePeer`` and, for a ``PassivePeer``, pushes the single-use answer the hook (or the bpf
program's answer map) gives the client's next SYN, through ``HookPublisher``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Hashable
from typing import Any, NamedTuple

from testbed.eno.bpf import datapath
from testbed.eno.control import DEFAULT_NAME, HookClient, HookUnavailableError
from testbed.teps.tcpcrypt.constants import DEFAULT_RESUME_NONCE_LEN, RESUME_HALF_LEN
from testbed.teps.tcpcrypt.resumption import CachedSession, ResumptionCache

logger = logging.getLogger(__name__)

CACHE_ENTRIES = 4096  # secrets per host process (oldest evicted first)
CACHE_LIFETIME = 600.0  # seconds a cached secret stays usable
ANSWER_MARGIN = 1.0  # the hook forgets an answer this long before the cache forgets its secret


class ActivePeer(NamedTuple):
    """Cache key of sessions this host opened: the server's address."""

    ip: str
    port: int


class PassivePeer(NamedTuple):
    """Cache key of sessions this host accepted: the client's address, our listener port."""

    ip: str
    port: int
    listen_port: int


class HookPublisher:
    """Answer pushes to this host's ENO datapath: one-way messages to the hook, or updates
    of the bpf program's answer map (testbed/eno/bpf/datapath.py) where this process runs
    on the bpf datapath; thread-safe, (re)connects to the hook when needed."""

    def __init__(self, hook_name: str = DEFAULT_NAME) -> None:
        self.hook_name = hook_name
        self.failures = 0
        self._client: HookClient | None = None
        self._lock = threading.Lock()

    def data_room(self) -> int | None:
        """The most answer data a SYN-ACK carries here, or None (the hook makes room)."""
        return None if datapath.current() is None else datapath.ANSWER_DATA_ROOM

    def answer(self, port: int, tep_id: int, key: bytes, data: bytes, ttl: float) -> None:
        host = datapath.current()
        if host is not None:
            self._push(lambda: host.answer(port, tep_id, key, data, ttl))
            return
        self._send(lambda c: c.answer(port, tep_id, key, data, ttl))

    def withdraw(self, port: int, tep_id: int, key: bytes) -> None:
        host = datapath.current()
        if host is not None:
            self._push(lambda: host.unanswer(port, tep_id, key))
            return
        self._send(lambda c: c.unanswer(port, tep_id, key))

    def _push(self, action: Any) -> None:
        try:
            action()
        except (OSError, ValueError, datapath.BpfDatapathError) as exc:
            # No listener (closed), or the map refused: later offers get a fresh exchange.
            self.failures += 1
            logger.warning("tcpcrypt: cannot push a resumption answer to the kernel: %s", exc)

    def _send(self, action: Any) -> None:
        with self._lock:
            try:
                if self._client is None:
                    self._client = HookClient(self.hook_name)
                action(self._client)
            except HookUnavailableError as exc:
                # The hook is gone or restarting: later offers get a fresh exchange (§3.5).
                self.failures += 1
                logger.warning("tcpcrypt: cannot push a resumption answer to the hook: %s", exc)
                if self._client is not None:
                    self._client.close()
                self._client = None


class HostCache(ResumptionCache):
    """This host process's ``ResumptionCache``, safe across connection threads, which keeps
    the hook's answers in step with the secrets it holds for passive opens (module docstring)."""

    def __init__(self, publisher: HookPublisher | None = None, *,
                 max_entries: int = CACHE_ENTRIES, lifetime: float = CACHE_LIFETIME,
                 nonce_len: int = DEFAULT_RESUME_NONCE_LEN) -> None:
        super().__init__(max_entries=max_entries, lifetime=lifetime)
        self.publisher = publisher
        self.nonce_len = nonce_len
        self._lock = threading.RLock()
        self._consuming = False  # a taken entry: the hook already used its answer
        self._thread = threading.local()  # .deferred: this thread's answers not yet pushed
        self._unpublished: dict[int, CachedSession] = {}  # id -> entry, answer not pushed

    def store(self, *, peer: Hashable, tep_id: int, secret: bytes, index: int,
              original_a: bool, aead_id: int, now: float) -> CachedSession:
        with self._lock:
            entry = super().store(peer=peer, tep_id=tep_id, secret=secret, index=index,
                                  original_a=original_a, aead_id=aead_id, now=now)
            if self.publisher is None or not isinstance(peer, PassivePeer):
                return entry
            deferred: list[CachedSession] | None = getattr(self._thread, "deferred", None)
            if deferred is not None:
                deferred.append(entry)
                self._unpublished[id(entry)] = entry
                return entry
        self._answer(entry)
        return entry

    def _answer(self, entry: CachedSession) -> None:
        """B's answer: the other half of resume[i+1] and our nonce (§3.5 Figs. 2, 3). The
        nonce may be 0..8 bytes (§3.5); on the bpf datapath 7 fit (module doc)."""
        if self.publisher is None or not isinstance(entry.peer, PassivePeer):
            return
        room = self.publisher.data_room()
        nonce_len = self.nonce_len if room is None else min(
            self.nonce_len, room - RESUME_HALF_LEN)
        data = entry.own_half + os.urandom(nonce_len)
        ttl = max(self.lifetime - ANSWER_MARGIN, self.lifetime / 2)
        self.publisher.answer(entry.peer.listen_port, entry.tep_id, entry.peer_half, data, ttl)

    def defer_answers(self) -> None:
        """The answers of secrets this thread caches from now on wait for
        ``publish_deferred``: a server pushes them after its response, off the path from the
        request to the response (the client's next SYN comes after the response)."""
        self._thread.deferred = []

    def publish_deferred(self) -> None:
        """Push this thread's deferred answers whose secrets are still cached; stop
        deferring."""
        deferred: list[CachedSession] = getattr(self._thread, "deferred", None) or []
        self._thread.deferred = None
        for entry in deferred:
            with self._lock:
                due = (self._unpublished.pop(id(entry), None) is entry
                       and self.peek(entry.peer) is entry)
            if due:
                self._answer(entry)

    def take_for_peer(self, peer: Hashable, tep_id: int, now: float) -> CachedSession | None:
        with self._lock:
            return super().take_for_peer(peer, tep_id, now)

    def take_by_half(self, tep_id: int, half: bytes, now: float) -> CachedSession | None:
        with self._lock:
            self._consuming = True
            try:
                return super().take_by_half(tep_id, half, now)
            finally:
                self._consuming = False

    def discard(self, peer: Hashable) -> bool:
        with self._lock:
            entry = self.peek(peer)
            gone = super().discard(peer)
            # The hook already used a taken entry's answer; a deferred one was never pushed.
            silent = self._consuming or (
                entry is not None and self._unpublished.pop(id(entry), None) is entry)
        if entry is not None and not silent and self.publisher is not None \
                and isinstance(peer, PassivePeer):
            self.publisher.withdraw(peer.listen_port, entry.tep_id, entry.peer_half)
        return gone

    def discard_entry(self, entry: CachedSession) -> bool:
        with self._lock:
            return super().discard_entry(entry)

    def expire(self, now: float) -> int:
        with self._lock:
            return super().expire(now)

    def clear(self) -> None:
        with self._lock:
            super().clear()
