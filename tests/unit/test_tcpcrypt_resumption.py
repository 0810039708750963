"""tcpcrypt session resumption (RFC 8548 §3.5): cache, identifiers, fresh fallback."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from testbed.teps.base import DataReceived, HandshakeComplete, Role, TepContext
from testbed.teps.tcpcrypt import TcpcryptCore, local_suboption_data
from testbed.teps.tcpcrypt.constants import AeadId, TepId
from testbed.teps.tcpcrypt.errors import ResumptionError
from testbed.teps.tcpcrypt.keys import next_secret
from testbed.teps.tcpcrypt.loopback import DeterministicRandom, Pair, connect
from testbed.teps.tcpcrypt.resumption import ResumptionCache, match_resumption
from testbed.teps.tcpcrypt.state import State


def expand(key: bytes, info: bytes, length: int) -> bytes:
    return HKDFExpand(hashes.SHA256(), length, info).derive(key)


def opts(cache: ResumptionCache, peer: str, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"tcpcrypt.cache": cache, "tcpcrypt.peer": peer}
    out.update({f"tcpcrypt.{k}": v for k, v in extra.items()})
    return out


def session(client: dict[str, Any], server: dict[str, Any], now: float = 0.0,
            seed: str = "s") -> Pair:
    """Client is the active opener (role A); returns the pumped pair."""
    pair = connect(TepId.X25519, options_a=client, options_b=server, now=now,
                   random_a=DeterministicRandom(seed + "a"),
                   random_b=DeterministicRandom(seed + "b"))
    pair.pump(now)
    pair.a.send_data(b"to B")
    pair.b.send_data(b"to A")
    pair.pump(now)
    assert any(isinstance(e, DataReceived) and e.data == b"to B" for e in pair.events_b)
    assert any(isinstance(e, DataReceived) and e.data == b"to A" for e in pair.events_a)
    return pair


@pytest.fixture
def caches() -> tuple[ResumptionCache, ResumptionCache]:
    return ResumptionCache(), ResumptionCache()


def test_fresh_session_caches_next_secret(caches: tuple[ResumptionCache, ResumptionCache]) -> None:
    ca, cb = caches
    pair = session(opts(ca, "B"), opts(cb, "A"))
    assert not pair.a.resumed
    ea, eb = ca.peek("B"), cb.peek("A")
    assert ea is not None and eb is not None
    assert ea.secret == eb.secret and ea.index == eb.index == 1
    assert ea.original_a and not eb.original_a
    assert ea.own_half == eb.peer_half and eb.own_half == ea.peer_half
    assert ea.own_half + eb.own_half == expand(ea.secret, b"\x06", 18)  # resume[1] (§3.5)
    assert ea.aead_id == AeadId.AES_128_GCM


def test_unconfirmed_session_does_not_displace_a_cached_secret(
        caches: tuple[ResumptionCache, ResumptionCache]) -> None:
    """A replayed SYN + Init1 completes B's half of a fresh exchange that A never joins: it
    must not replace the secret B holds for that peer (the one A will resume with, §3.5)."""
    ca, cb = caches
    session(opts(ca, "B"), opts(cb, "A"))
    held = cb.peek("A")
    assert held is not None and ca.peek("B") is not None
    replay = connect(TepId.X25519, options_a=opts(ResumptionCache(), "B"),
                     options_b=opts(cb, "A"), random_a=DeterministicRandom("ra"),
                     random_b=DeterministicRandom("rb"))
    replay.pump()  # Init1 and Init2: both sides hold the replayed session's keys
    assert replay.b.session_id is not None and replay.b.session_id == replay.a.session_id
    assert cb.peek("A") is held, "an unconfirmed session replaced the cached secret"
    replay.a.send_data(b"proof")
    replay.pump()
    now_held = cb.peek("A")
    assert now_held is not None and now_held is not held  # A's frame authenticated: cached
    assert now_held.secret != held.secret


def test_resumption_with_known_identifier(caches: tuple[ResumptionCache, ResumptionCache]) -> None:
    ca, cb = caches
    first = session(opts(ca, "B"), opts(cb, "A"))
    entry = ca.peek("B")
    assert entry is not None
    client, server = opts(ca, "B"), opts(cb, "A")
    pair = connect(TepId.X25519, options_a=client, options_b=server,
                   random_a=DeterministicRandom("2a"), random_b=DeterministicRandom("2b"))
    syn, synack = client["tcpcrypt.local_suboption_data"], server["tcpcrypt.local_suboption_data"]
    assert len(syn) == len(synack) == 17
    assert syn[:9] == entry.own_half and synack[:9] == entry.peer_half
    assert pair.a.resumed and pair.b.resumed
    assert pair.a.state is State.ESTABLISHED  # keys at once, no Init messages
    assert pair.events_a == [HandshakeComplete(pair.a.session_id or b"", resumed=True)]
    sn = syn[9:] + synack[9:]  # nonce_a | nonce_b (§3.5)
    expected_sid = b"\xa3" + expand(entry.secret, b"\x02" + sn, 32)  # v = 1 in byte 0 (§3.4)
    assert pair.a.session_id == pair.b.session_id == expected_sid
    assert expected_sid != first.a.session_id
    pair.a.send_data(b"first flight")  # A may send in its first data segment
    frame = pair.a.data_to_send()
    mk0 = expand(entry.secret, b"\x03" + sn, 32)
    k_ab = expand(mk0, b"\x04", 28)
    assert AESGCM(k_ab[:16]).decrypt(k_ab[16:], frame[3:], frame[:3]) == b"\x00first flight"
    pair.b.receive_data(frame, 0.0)
    # ss[1] is gone from both caches, ss[2] took its place (§3.5).
    ea2, eb2 = ca.peek("B"), cb.peek("A")
    assert ea2 is not None and eb2 is not None
    assert ea2.index == eb2.index == 2 and ea2.secret == next_secret(entry.secret)


def test_resumption_chain_and_role_swap(caches: tuple[ResumptionCache, ResumptionCache]) -> None:
    ca, cb = caches
    ids = {session(opts(ca, "B"), opts(cb, "A")).a.session_id}
    for i in range(3):
        # Alternate who opens: keys still follow the roles of the first session (§3.3, §3.5).
        if i % 2:
            pair = session(opts(ca, "B"), opts(cb, "A"), seed=f"r{i}")
        else:
            pair = session(opts(cb, "A"), opts(ca, "B"), seed=f"r{i}")
        assert pair.a.resumed and pair.b.resumed
        ids.add(pair.a.session_id)
        entry = ca.peek("B")
        assert entry is not None and entry.index == i + 2 and entry.original_a
    assert len(ids) == 4


def test_unknown_identifier_gives_fresh_exchange(
    caches: tuple[ResumptionCache, ResumptionCache],
) -> None:
    ca, cb = caches
    session(opts(ca, "B"), opts(cb, "A"))
    old = ca.peek("B")
    cb.clear()  # B forgot (reboot, eviction...)
    client, server = opts(ca, "B"), opts(cb, "A")
    pair = session(client, server, seed="f")
    assert len(client["tcpcrypt.local_suboption_data"]) == 17
    assert "tcpcrypt.local_suboption_data" not in server  # B answered v = 0
    assert not pair.a.resumed and not pair.b.resumed
    assert (pair.a.session_id or b"")[0] == 0x23
    new = ca.peek("B")
    assert new is not None and old is not None and new.index == 1 and new.secret != old.secret


def test_identifier_is_single_use(caches: tuple[ResumptionCache, ResumptionCache]) -> None:
    ca, cb = caches
    session(opts(ca, "B"), opts(cb, "A"))
    client = opts(ca, "B")
    syn = local_suboption_data(client, TepId.X25519, DeterministicRandom("x"), 0.0)
    server = opts(cb, "A")
    assert local_suboption_data(server, TepId.X25519, DeterministicRandom("y"), 0.0, syn)
    replay = opts(cb, "A")
    assert local_suboption_data(replay, TepId.X25519, DeterministicRandom("z"), 0.0, syn) == b""
    assert len(ca) == len(cb) == 0
    assert local_suboption_data(opts(ca, "B"), TepId.X25519, DeterministicRandom("w"), 0.0) == b""


def test_expired_entry_is_not_offered() -> None:
    ca, cb = ResumptionCache(lifetime=10.0), ResumptionCache(lifetime=10.0)
    session(opts(ca, "B"), opts(cb, "A"), now=100.0)
    pair = session(opts(ca, "B"), opts(cb, "A"), now=110.5, seed="late")
    assert not pair.a.resumed


def test_b_expiry_forces_fresh() -> None:
    ca, cb = ResumptionCache(lifetime=100.0), ResumptionCache(lifetime=10.0)
    session(opts(ca, "B"), opts(cb, "A"), now=0.0)
    pair = session(opts(ca, "B"), opts(cb, "A"), now=50.0, seed="bexp")
    assert not pair.a.resumed and not pair.b.resumed


@pytest.mark.parametrize("side", ["client", "server"])
def test_refusing_resumption(caches: tuple[ResumptionCache, ResumptionCache], side: str) -> None:
    ca, cb = caches
    session(opts(ca, "B"), opts(cb, "A"))
    client = opts(ca, "B", resume=side != "client")
    server = opts(cb, "A", resume=side != "server")
    pair = session(client, server, seed="no")
    assert not pair.a.resumed and not pair.b.resumed


def test_no_caching_policy(caches: tuple[ResumptionCache, ResumptionCache]) -> None:
    ca, cb = caches
    session(opts(ca, "B", cache_secrets=False), opts(cb, "A", cache_secrets=False))
    assert len(ca) == len(cb) == 0


def test_zero_length_nonce(caches: tuple[ResumptionCache, ResumptionCache]) -> None:
    ca, cb = caches
    session(opts(ca, "B"), opts(cb, "A"))
    client, server = opts(ca, "B", nonce_len=0), opts(cb, "A", nonce_len=0)
    pair = session(client, server, seed="z")
    assert pair.a.resumed and len(client["tcpcrypt.local_suboption_data"]) == 9


def test_short_resumption_data_means_fresh_offer(
    caches: tuple[ResumptionCache, ResumptionCache],
) -> None:
    _, cb = caches
    for data in (b"\x01" * 8, b"", b"\x01" * 18):
        assert local_suboption_data(opts(cb, "A"), TepId.X25519, DeterministicRandom(""),
                                    0.0, peer_data=data) == b""


def test_offer_only_for_the_cached_tep(caches: tuple[ResumptionCache, ResumptionCache]) -> None:
    ca, cb = caches
    session(opts(ca, "B"), opts(cb, "A"))
    assert local_suboption_data(opts(ca, "B"), TepId.X448, DeterministicRandom(""), 0.0) == b""
    assert "B" in ca
    assert local_suboption_data(opts(ca, "B"), TepId.X25519, DeterministicRandom(""), 0.0)


def test_mismatched_answer_refused(caches: tuple[ResumptionCache, ResumptionCache]) -> None:
    ca, cb = caches
    session(opts(ca, "B"), opts(cb, "A"))
    client = opts(ca, "B")
    local_suboption_data(client, TepId.X25519, DeterministicRandom("m"), 0.0)
    ctx = TepContext(Role.A, b"", DeterministicRandom("m"), 0.0, b"\x99" * 17, client)
    a = TcpcryptCore(ctx, TepId.X25519)
    with pytest.raises(ResumptionError):
        a.start(0.0)
    assert a.state is State.ERROR
    pending = client["tcpcrypt.pending_session"]
    with pytest.raises(ResumptionError):
        match_resumption(pending, TepId.X25519, b"x" * 9, b"\x99" * 5)
    assert match_resumption(pending, TepId.X25519, b"x" * 9, b"") is None
    assert match_resumption(pending, TepId.X448, b"x" * 9, b"\x99" * 9) is None


def test_flush_cache(caches: tuple[ResumptionCache, ResumptionCache]) -> None:
    ca, cb = caches
    pair = session(opts(ca, "B"), opts(cb, "A"))
    assert pair.a.flush_cache() and "B" not in ca
    assert not pair.a.flush_cache()
    assert "A" in cb


# -- the cache itself -------------------------------------------------------------------------


def store(cache: ResumptionCache, peer: str, now: float = 0.0, tep: int = TepId.X25519) -> None:
    cache.store(peer=peer, tep_id=tep, secret=peer.encode().ljust(32, b"."), index=1,
                original_a=True, aead_id=AeadId.AES_128_GCM, now=now)


def test_cache_is_bounded_oldest_first() -> None:
    cache = ResumptionCache(max_entries=2)
    for peer in ("p1", "p2", "p3"):
        store(cache, peer)
    assert len(cache) == 2 and "p1" not in cache and "p3" in cache


def test_cache_expiry_and_take() -> None:
    cache = ResumptionCache(lifetime=5.0)
    store(cache, "p1", now=0.0)
    store(cache, "p2", now=3.0)
    assert cache.expire(6.0) == 1 and "p2" in cache
    assert cache.take_for_peer("p2", TepId.X25519, 9.0) is None  # expired: erased, not given
    assert len(cache) == 0


def test_cache_take_by_half_and_replacement() -> None:
    cache = ResumptionCache()
    store(cache, "p1")
    entry = cache.peek("p1")
    assert entry is not None
    store(cache, "p1")  # same peer again: the old entry and its half are gone
    newer = cache.peek("p1")
    assert newer is not None and newer is not entry
    assert not cache.discard_entry(entry)
    assert cache.take_by_half(TepId.X448, newer.peer_half, 0.0) is None
    assert cache.take_by_half(TepId.X25519, newer.peer_half, 0.0) is newer
    assert cache.take_by_half(TepId.X25519, newer.peer_half, 0.0) is None


def test_cache_arguments() -> None:
    with pytest.raises(ValueError):
        ResumptionCache(max_entries=0)
    with pytest.raises(ValueError):
        ResumptionCache(lifetime=0)
    with pytest.raises(ValueError):
        TcpcryptCore(TepContext(Role.A, b"", options={"tcpcrypt.cache": {}}), TepId.X25519)
    with pytest.raises(ValueError):
        TcpcryptCore(TepContext(Role.A, b"", options={"tcpcrypt.nonce_len": 9}), TepId.X25519)


def test_a_resumed_core_answers_handshake_complete_from_start(
        caches: tuple[ResumptionCache, ResumptionCache]) -> None:
    """start() returns the resumed session's HandshakeComplete (its keys exist at once, §3.5);
    nothing waits for a later receive_data. A fresh start() returns no event."""
    ca, cb = caches
    session(opts(ca, "B"), opts(cb, "A"))
    client, server = opts(ca, "B"), opts(cb, "A")
    rand_a, rand_b = DeterministicRandom("sa"), DeterministicRandom("sb")
    syn = local_suboption_data(client, TepId.X25519, rand_a, 0.0)
    synack = local_suboption_data(server, TepId.X25519, rand_b, 0.0, peer_data=syn)
    a = TcpcryptCore(TepContext(Role.A, b"", rand_a, 0.0, synack, client), TepId.X25519)
    b = TcpcryptCore(TepContext(Role.B, b"", rand_b, 0.0, syn, server), TepId.X25519)
    got_a, got_b = a.start(0.0), b.start(0.0)
    assert got_a == [HandshakeComplete(a.session_id or b"", resumed=True)]
    assert got_b == [HandshakeComplete(b.session_id or b"", resumed=True)]
    assert a.session_id == b.session_id and a.receive_data(b"", 0.0) == []
    fresh = TcpcryptCore(TepContext(Role.A, b"", DeterministicRandom("f"), 0.0, b"", {}),
                         TepId.X25519)
    assert fresh.start(0.0) == [] and fresh.data_to_send()  # Init1 queued, no event
