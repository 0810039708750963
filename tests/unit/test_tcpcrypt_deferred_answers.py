"""HostCache.defer_answers: a server's resumption answer is pushed after its response
(testbed/apps/tcpcrypt_cache.py), never for a secret that left the cache meanwhile."""

from __future__ import annotations

import threading
from collections.abc import Hashable

from testbed.apps import proto_tcpcrypt as pt
from testbed.teps.tcpcrypt.resumption import CachedSession

from .test_proto_tcpcrypt import SERVER, SPEC, FakeHook


def _store(cache: pt.HostCache, peer: Hashable, secret: bytes) -> CachedSession:
    return cache.store(peer=peer, tep_id=SPEC.tep_id, secret=secret, index=1,
                       original_a=False, aead_id=1, now=0.0)


def test_deferred_answers_wait_for_publish_and_other_threads_do_not() -> None:
    hook = FakeHook()
    cache = pt.HostCache(hook)
    cache.defer_answers()
    entry = _store(cache, pt.PassivePeer("10.0.1.1", 1, SERVER[1]), b"a" * 32)
    assert cache.peek(entry.peer) is entry  # cached at once: only the push waits
    assert hook.answers == {}
    other: list[CachedSession] = []  # a thread that did not defer pushes as before
    thread = threading.Thread(target=lambda: other.append(
        _store(cache, pt.PassivePeer("10.0.1.1", 2, SERVER[1]), b"b" * 32)))
    thread.start()
    thread.join(5)
    assert list(hook.answers) == [(SERVER[1], SPEC.tep_id, other[0].peer_half)]
    cache.publish_deferred()
    assert (SERVER[1], SPEC.tep_id, entry.peer_half) in hook.answers
    assert hook.answers[(SERVER[1], SPEC.tep_id, entry.peer_half)][:9] == entry.own_half
    later = _store(cache, pt.PassivePeer("10.0.1.1", 3, SERVER[1]), b"c" * 32)
    assert (SERVER[1], SPEC.tep_id, later.peer_half) in hook.answers  # deferring ended
    assert hook.withdrawn == []


def test_a_deferred_answer_whose_secret_left_is_neither_pushed_nor_withdrawn() -> None:
    hook = FakeHook()
    cache = pt.HostCache(hook, max_entries=1)
    cache.defer_answers()
    peer = pt.PassivePeer("10.0.1.1", 1, SERVER[1])
    first = _store(cache, peer, b"a" * 32)
    second = _store(cache, peer, b"b" * 32)  # replaces the first (one chain per peer)
    flushed = _store(cache, pt.PassivePeer("10.0.1.1", 2, SERVER[1]), b"c" * 32)  # evicts
    cache.discard(flushed.peer)  # the §3.5 flush control
    cache.publish_deferred()
    assert hook.answers == {} and hook.withdrawn == []
    assert cache.peek(peer) is None and first is not second
