"""The tcpcrypt stream provider and host cache (testbed/apps/proto_tcpcrypt.py), in memory.

Two providers stand for the client and the server process; a dict stands for the server's
hook (the answers the server's cache pushed). Each connection goes the way the stream drives
it: the SYN data from ``suboption_data``, the hook's answer, ``context_options`` on both
sides from a ``Result`` as the hook reports it, then the two cores over a fake link.
"""

from __future__ import annotations

import random
import time
from collections.abc import Hashable
from typing import Any

import pytest

from testbed.apps import proto_tcpcrypt as pt
from testbed.eno.control import Result
from testbed.stream import StreamConfig, StreamInfo
from testbed.teps import base
from testbed.teps.base import DataReceived, Role, TepContext
from testbed.teps.tcpcrypt import TcpcryptCore
from testbed.teps.tcpcrypt.constants import RESUME_HALF_LEN, TepId
from testbed.teps.tcpcrypt.errors import ResumptionError
from testbed.teps.tcpcrypt.loopback import FakeLink, Pair
from testbed.teps.tcpcrypt.resumption import CachedSession

CLIENT, SERVER = ("10.0.1.1", 40000), ("10.0.2.1", 5000)
SPEC = base.get("tcpcrypt-x25519")


class FakeHook(pt.HookPublisher):
    """The server host's hook as far as answers go."""

    def __init__(self) -> None:
        super().__init__("unused")
        self.answers: dict[tuple[int, int, bytes], bytes] = {}
        self.withdrawn: list[bytes] = []

    def answer(self, port: int, tep_id: int, key: bytes, data: bytes, ttl: float) -> None:
        assert 0 < ttl < pt.CACHE_LIFETIME
        self.answers[(port, tep_id, key)] = data

    def withdraw(self, port: int, tep_id: int, key: bytes) -> None:
        self.withdrawn.append(key)
        self.answers.pop((port, tep_id, key), None)

    def syn(self, data: bytes) -> bytes:
        """What the engine does with a SYN's suboption data: take a matching answer."""
        if len(data) < RESUME_HALF_LEN:
            return b""
        return self.answers.pop((SERVER[1], SPEC.tep_id, data[:RESUME_HALF_LEN]), b"")


def result(active: bool, local_data: bytes, peer_data: bytes, port: int) -> Result:
    client = (CLIENT[0], port)
    local, remote = (client, SERVER) if active else (SERVER, client)
    return Result(local=local, remote=remote, active=active, state="enabled",
                  outcome="negotiated", role="A" if active else "B", tep_id=SPEC.tep_id,
                  local_data=local_data.hex(), peer_data=peer_data.hex())


class Hosts:
    def __init__(self) -> None:
        self.hook = FakeHook()
        self.client = pt.TcpcryptProvider(pt.HostCache())
        self.server = pt.TcpcryptProvider(pt.HostCache(self.hook))
        self.port = 40000

    def connect(self, message: bytes = b"request") -> Pair:
        """One connection; returns the pair after data went both ways."""
        self.port += 1
        syn = self.client.suboption_data(SPEC, active=True, peer=SERVER) or b""
        answer = self.hook.syn(syn)
        if answer:  # the stream put the expected half in the announcement
            assert self.client.expected_peer_data(SPEC, syn) == answer[:RESUME_HALF_LEN]
        opts_a = self.client.context_options(SPEC, role=Role.A, peer=SERVER,
                                             result=result(True, syn, answer, self.port))
        opts_b = self.server.context_options(SPEC, role=Role.B, peer=(CLIENT[0], self.port),
                                             result=result(False, answer, syn, self.port))
        return run(opts_a, opts_b, syn, answer, message)


def run(opts_a: dict[str, Any], opts_b: dict[str, Any], syn: bytes, answer: bytes,
        message: bytes) -> Pair:
    now = time.monotonic()  # the providers' clock, as the stream's TepContext.now
    ctx_a = TepContext(Role.A, b"t", now=now, peer_suboption_data=answer, options=opts_a)
    ctx_b = TepContext(Role.B, b"t", now=now, peer_suboption_data=syn, options=opts_b)
    rng = random.Random(7)
    pair = Pair(TcpcryptCore(ctx_a, SPEC.tep_id), TcpcryptCore(ctx_b, SPEC.tep_id),
                FakeLink(rng), FakeLink(rng))
    pair.start(now)
    pair.pump(now)
    pair.a.send_data(message)
    pair.pump(now)
    assert b"".join(e.data for e in pair.events_b if isinstance(e, DataReceived)) == message
    assert pair.a.session_id == pair.b.session_id
    return pair


def test_first_connection_fresh_later_ones_resume_the_one_before() -> None:
    hosts = Hosts()
    first = hosts.connect()
    assert not first.a.resumed and not first.b.resumed
    assert first.a.session_id is not None and first.a.session_id[0] == TepId.X25519
    seen = {first.a.session_id}
    for _ in range(3):
        pair = hosts.connect()
        assert pair.a.resumed and pair.b.resumed  # no Init1/Init2 (§3.5)
        assert pair.a.session_id is not None and pair.a.session_id[0] == 0x80 | TepId.X25519
        assert pair.a.session_id not in seen
        seen.add(pair.a.session_id)
    # One secret per chain at each end, one answer waiting in the hook.
    assert len(hosts.client.cache or ()) == 1 and len(hosts.hook.answers) == 1


def test_the_fresh_provider_offers_and_caches_nothing() -> None:
    fresh = pt.TcpcryptProvider(None)
    assert fresh.suboption_data(SPEC, active=True, peer=SERVER) is None
    options = fresh.context_options(SPEC, role=Role.A, peer=SERVER,
                                    result=result(True, b"", b"", 1))
    assert options == {"tcpcrypt.resume": False, "tcpcrypt.cache_secrets": False}


def test_an_answer_whose_secret_left_the_cache_resets_instead_of_guessing() -> None:
    hosts = Hosts()
    hosts.connect()
    assert hosts.server.cache is not None
    stale = dict(hosts.hook.answers)  # as if the withdrawal had not reached the hook yet
    hosts.server.cache.clear()
    hosts.hook.answers = stale
    syn = hosts.client.suboption_data(SPEC, active=True, peer=SERVER) or b""
    answer = hosts.hook.syn(syn)
    assert answer
    with pytest.raises(ResumptionError, match="no longer cached"):
        hosts.server.context_options(SPEC, role=Role.B, peer=CLIENT,
                                     result=result(False, answer, syn, 1))


def test_an_offer_this_process_never_made_is_refused() -> None:
    hosts = Hosts()
    with pytest.raises(ResumptionError, match="did not make"):
        hosts.client.context_options(SPEC, role=Role.A, peer=SERVER,
                                     result=result(True, bytes(17), b"", 1))


def test_an_unknown_identifier_gets_a_fresh_exchange_and_the_secret_is_spent() -> None:
    hosts = Hosts()
    hosts.connect()
    hosts.hook.answers.clear()  # the server forgot (restart): §3.5 fresh key exchange
    pair = hosts.connect()
    assert not pair.a.resumed
    # The offered secret was used up (§3.5 "lowest i not yet tried"); the new one resumes.
    assert hosts.connect().a.resumed


def test_host_cache_withdraws_answers_on_eviction_but_not_when_taken() -> None:
    hook = FakeHook()
    cache = pt.HostCache(hook, max_entries=1)

    def store(peer: Hashable, secret: bytes) -> CachedSession:
        return cache.store(peer=peer, tep_id=SPEC.tep_id, secret=secret, index=1,
                           original_a=False, aead_id=1, now=0.0)

    first = store(pt.PassivePeer("10.0.1.1", 1, SERVER[1]), b"a" * 32)
    second = store(pt.PassivePeer("10.0.1.1", 2, SERVER[1]), b"b" * 32)
    assert hook.withdrawn == [first.peer_half]  # evicted: its answer goes too
    assert cache.take_by_half(SPEC.tep_id, second.peer_half, 1.0) is second
    assert hook.withdrawn == [first.peer_half]
    store(pt.ActivePeer(*SERVER), b"c" * 32)
    assert len(hook.answers) == 1, "sessions opened actively are never answered passively"


def test_records_say_resumed_from_the_session_id_byte_and_the_option_sizes() -> None:
    info = StreamInfo(policy="opportunistic", session_id=bytes([0xA3]) + bytes(32),
                      transcript=bytes.fromhex("4514") + bytes(18) + bytes.fromhex("4515")
                      + bytes(19))
    assert pt.tcpcrypt_keys(info, 8) == {"resumed": True, "resume_nonce_len": 8,
                                         "eno_option_bytes": [20, 21]}
    info.session_id = bytes([0x23]) + bytes(32)
    assert pt.tcpcrypt_keys(info, None)["resumed"] is False
    assert pt.eno_option_lengths(b"") is None


def test_arms_and_stream_settings() -> None:
    assert pt.PREFERENCE[0] == "tcpcrypt-x25519"
    arms = pt.arms()
    assert arms["tcpcrypt"] == (pt.PREFERENCE, False)
    assert arms["tcpcrypt-p256-resume"] == (("tcpcrypt-p256",), True)
    hosts = Hosts()
    hosts.connect()
    config = StreamConfig(teps=(SPEC.name,), providers={SPEC.name: hosts.client})
    settings = config.settings(active=True, peer=SERVER)
    (tep_id, data), = settings.teps
    assert tep_id == SPEC.tep_id and data is not None and len(data) == 17
    assert settings.expect == ((SPEC.tep_id, hosts.client.expected_peer_data(SPEC, data)),)
    assert config.settings(active=False, peer=None).teps == ((SPEC.tep_id, None),)


def test_a_resuming_client_seals_its_first_data_at_start() -> None:
    # §3.5: a resumed A has its keys at start(), so first_data leaves in its first write.
    from testbed.teps.tcpcrypt.options import OPT_FIRST_DATA

    hosts = Hosts()
    hosts.connect()  # fresh: both hosts cache the next secret
    hosts.port += 1
    syn = hosts.client.suboption_data(SPEC, active=True, peer=SERVER) or b""
    answer = hosts.hook.syn(syn)
    assert answer, "the server's hook holds an answer for the cached secret"
    opts_a = hosts.client.context_options(SPEC, role=Role.A, peer=SERVER,
                                          result=result(True, syn, answer, hosts.port))
    opts_b = hosts.server.context_options(SPEC, role=Role.B, peer=(CLIENT[0], hosts.port),
                                          result=result(False, answer, syn, hosts.port))
    now = time.monotonic()
    a = TcpcryptCore(TepContext(Role.A, b"t", now=now, peer_suboption_data=answer,
                                options={**opts_a, OPT_FIRST_DATA: b"GET /"}), SPEC.tep_id)
    b = TcpcryptCore(TepContext(Role.B, b"t", now=now, peer_suboption_data=syn,
                                options=opts_b), SPEC.tep_id)
    a.start(now)
    b.start(now)
    assert a.resumed and b.resumed
    got = b.receive_data(a.data_to_send(), now)
    assert [e.data for e in got if isinstance(e, DataReceived)] == [b"GET /"]


def test_a_resuming_client_closes_before_its_next_connection() -> None:
    # The server pushes the answer a resuming SYN names after its response and before its
    # end of stream, so the client's next SYN waits for that close (testbed/apps/client.py).
    from types import SimpleNamespace

    def conn(nonce_len: int | None, client: bool) -> pt.TcpcryptConn:
        stream = SimpleNamespace(info=StreamInfo(policy="opportunistic"))
        return pt.TcpcryptConn(stream, nonce_len, client=client)  # type: ignore[arg-type]

    assert conn(8, client=True).close_before_next
    assert not conn(None, client=True).close_before_next  # a fresh arm: nothing to wait for
    assert not conn(8, client=False).close_before_next  # the server's close waits for nobody
