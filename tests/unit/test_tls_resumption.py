"""Beyond use-tls-00: PSK resumption, 0-RTT (accepted and rejected), 0.5-RTT, compat mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from OpenSSL import SSL
from OpenSSL._util import lib

from testbed.teps import base
from testbed.teps.base import DataReceived, EndOfStream, HandshakeComplete
from testbed.teps.tls import ServerIdentity, TlsConfigError, TlsSessionCache, _ossl
from testbed.teps.tls import identity as shared
from testbed.teps.tls.pair import MemoryLink, tls_pair


def data_of(events: list[base.TepEvent], *, early: bool | None = None) -> bytes:
    return b"".join(
        e.data
        for e in events
        if isinstance(e, DataReceived) and (early is None or e.early == early)
    )


def complete(events: list[base.TepEvent]) -> HandshakeComplete:
    (done,) = [e for e in events if isinstance(e, HandshakeComplete)]
    return done


def close_both(link: MemoryLink) -> None:
    # A clean close matters: OpenSSL forgets the session of a connection freed without
    # close_notify (ssl_clear_bad_session), and with it the newest ticket.
    link.a.close()
    link.b.close()
    link.pump()
    assert isinstance(link.a_events[-1], EndOfStream) and isinstance(link.b_events[-1], EndOfStream)


def connect(
    identity: ServerIdentity, cache: TlsSessionCache, **client: object
) -> MemoryLink:
    link, _, _ = tls_pair(
        client={"session_cache": cache, **client}, server={"server_identity": identity}
    )
    link.handshake()
    return link


@pytest.fixture
def identity() -> ServerIdentity:
    return ServerIdentity.with_early_data()


def test_full_then_resumed_handshakes(identity: ServerIdentity) -> None:
    cache = TlsSessionCache()
    first = connect(identity, cache)
    assert not complete(first.a_events).resumed
    close_both(first)
    for _ in range(3):  # each resumption brings a fresh ticket (RFC 8446 §4.6.1)
        link = connect(identity, cache)
        assert complete(link.a_events).resumed and complete(link.b_events).resumed
        assert link.a.session_id == link.b.session_id != first.a.session_id
        link.a.send_data(b"over the resumed session")
        link.pump()
        assert data_of(link.b_events) == b"over the resumed session"
        close_both(link)


def test_draft_profile_server_never_resumes() -> None:
    identity = ServerIdentity()  # use-tls-00: no resumption
    cache = TlsSessionCache()
    close_both(connect(identity, cache))
    assert len(cache) == 1  # OpenSSL still sends a ticket (no SSL_CTX_set_num_tickets) ...
    link = connect(identity, cache)
    assert not complete(link.a_events).resumed  # ... but it cannot be redeemed


def test_zero_rtt_accepted(identity: ServerIdentity) -> None:
    cache = TlsSessionCache()
    close_both(connect(identity, cache, early_data=b"GET /"))
    link, a, b = tls_pair(
        client={"session_cache": cache, "early_data": b"GET /"},
        server={"server_identity": identity},
    )
    link.start()
    a.send_data(b" HTTP/1.1")  # still inside the 0-RTT window
    first_flight = a.data_to_send()
    events = b.receive_data(first_flight, 0.0)
    # The server has the request before the client's Finished exists (RFC 8446 §2.3).
    assert events == [DataReceived(b"GET / HTTP/1.1", early=True)]
    assert not b.handshake_complete
    link.pump()
    assert complete(link.a_events) == HandshakeComplete(
        a.session_id or b"", resumed=True, early_data_accepted=True
    )
    assert complete(link.b_events).early_data_accepted is True
    assert data_of(events + link.b_events) == b"GET / HTTP/1.1"  # exactly once
    assert a.session_id == b.session_id


def test_zero_rtt_beyond_max_early_data_goes_after_handshake() -> None:
    identity = ServerIdentity(resumption=True, max_early_data=100)
    cache = TlsSessionCache()
    close_both(connect(identity, cache))
    payload = bytes(range(256)) * 2
    link = connect(identity, cache, early_data=payload)
    assert complete(link.a_events).early_data_accepted is True
    assert data_of(link.b_events, early=True) == payload[:100]
    assert data_of(link.b_events) == payload


def test_early_data_without_ticket_is_sent_after_handshake(identity: ServerIdentity) -> None:
    link = connect(identity, TlsSessionCache(), early_data=b"no ticket yet")
    assert complete(link.a_events).early_data_accepted is None
    assert data_of(link.b_events, early=False) == b"no ticket yet"


def test_zero_rtt_rejected_unknown_ticket_falls_back(identity: ServerIdentity) -> None:
    cache = TlsSessionCache()
    close_both(connect(identity, cache))
    restarted = ServerIdentity.with_early_data()  # new ticket keys and cache: PSK unknown
    link = connect(restarted, cache, early_data=b"resend me")
    done = complete(link.a_events)
    assert done.early_data_accepted is False and not done.resumed
    assert complete(link.b_events).early_data_accepted is None
    assert data_of(link.b_events, early=True) == b""
    assert data_of(link.b_events) == b"resend me"  # re-sent after the handshake, once
    assert link.a.session_id == link.b.session_id


def test_zero_rtt_replayed_ticket_rejected(identity: ServerIdentity) -> None:
    cache = TlsSessionCache()
    close_both(connect(identity, cache))
    ticket = cache.take("")
    assert ticket is not None
    replay = TlsSessionCache()
    cache.put("", ticket)
    replay.put("", ticket)
    close_both(connect(identity, cache, early_data=b"once"))
    link = connect(identity, replay, early_data=b"twice")  # RFC 8446 §8.1 single-use ticket
    assert complete(link.a_events).early_data_accepted is False
    assert data_of(link.b_events, early=True) == b""
    assert data_of(link.b_events) == b"twice"


def test_zero_rtt_rejected_but_resumed(identity: ServerIdentity) -> None:
    cache = TlsSessionCache()
    close_both(connect(identity, cache))
    # The server stops taking 0-RTT after issuing the ticket. OpenSSL finds the (stateful,
    # because 0-RTT was on) ticket in its cache only while NO_TICKET or 0-RTT is set.
    # pyOpenSSL refuses to change a used Context, hence the raw binding.
    lib.SSL_CTX_set_options(identity.context._context, SSL.OP_NO_TICKET)
    _ossl.set_max_early_data(identity.context, 0)
    link = connect(identity, cache, early_data=b"skip me")
    done = complete(link.a_events)
    assert done.resumed and done.early_data_accepted is False
    assert data_of(link.b_events) == b"skip me" and data_of(link.b_events, early=True) == b""


def test_tampered_early_data_is_integrity_error(identity: ServerIdentity) -> None:
    cache = TlsSessionCache()
    close_both(connect(identity, cache))
    link, a, b = tls_pair(
        client={"session_cache": cache, "early_data": b"0-RTT request"},
        server={"server_identity": identity},
    )
    link.start()
    flight = a.data_to_send()
    delivered: list[base.TepEvent] = []
    with pytest.raises(base.IntegrityError, match="bad_record_mac"):
        delivered += b.receive_data(flight[:-1] + bytes([flight[-1] ^ 1]), 0.0)
    assert delivered == []


def test_half_rtt_reply_rides_the_server_flight(identity: ServerIdentity) -> None:
    cache = TlsSessionCache()
    close_both(connect(identity, cache))
    link, a, b = tls_pair(
        client={"session_cache": cache, "early_data": b"request"},
        server={"server_identity": identity, "half_rtt_data": True},
    )
    link.start()
    assert b.receive_data(a.data_to_send(), 0.0) == [DataReceived(b"request", early=True)]
    b.send_data(b"response")  # before the client's Finished: 0.5-RTT data
    events = a.receive_data(b.data_to_send(), 0.0)
    assert [type(e) for e in events] == [HandshakeComplete, DataReceived]
    assert data_of(events) == b"response" and not b.handshake_complete
    link.pump()
    assert b.handshake_complete and a.session_id == b.session_id


# --- middlebox compatibility mode (RFC 8446 §D.4) --------------------------------------------


def record_types(data: bytes) -> list[int]:
    """Content types of the TLS records in ``data`` (RFC 8446 §5.1 header: type, ver, len)."""
    types, offset = [], 0
    while offset + 5 <= len(data):
        types.append(data[offset])
        offset += 5 + int.from_bytes(data[offset + 3 : offset + 5], "big")
    return types


# ClientHello: record header 5, handshake header 4, legacy_version 2, random 32 -> id length.
SESSION_ID_LEN_OFFSET = 43
CCS = 20


def compat_observation(client_on: bool, server_on: bool) -> dict[str, object]:
    link, a, b = tls_pair(
        client={"middlebox_compat": client_on},
        server={"server_identity": ServerIdentity(), "middlebox_compat": server_on},
    )
    link.handshake()
    flights = [data for _, data in link.wire]
    return {
        "session_id_len": flights[0][SESSION_ID_LEN_OFFSET],
        "server_ccs": CCS in record_types(flights[1]),
        "client_ccs": CCS in record_types(flights[2]),
        "equal_ids": a.session_id == b.session_id,
    }


def test_compat_mode_on_by_default() -> None:
    seen = compat_observation(True, True)
    assert seen == {"session_id_len": 32, "server_ccs": True, "client_ccs": True, "equal_ids": True}


@pytest.mark.skipif(not _ossl.compat_default_on(), reason="process config already clears it")
def test_compat_off_refused_where_openssl_cannot_clear_it() -> None:
    with pytest.raises(TlsConfigError, match="OPENSSL_CONF"):
        compat_observation(False, False)


_COMPAT_SCRIPT = textwrap.dedent(
    """
    import json
    from test_tls_resumption import compat_observation
    print(json.dumps({f"{c}-{s}": compat_observation(c, s)
                      for c in (True, False) for s in (True, False)}))
    """
)


def test_compat_off_in_a_process_configured_for_it(tmp_path: Path) -> None:
    conf = tmp_path / "openssl.cnf"
    conf.write_text(
        "openssl_conf = init\n[init]\nssl_conf = ssl\n[ssl]\nsystem_default = sys\n"
        "[sys]\nOptions = -MiddleboxCompat\n"
    )
    env = {**os.environ, "OPENSSL_CONF": str(conf)}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), *sys.path])
    run = subprocess.run(
        [sys.executable, "-c", _COMPAT_SCRIPT], env=env, capture_output=True, timeout=60
    )
    assert run.returncode == 0, run.stderr.decode()
    seen = json.loads(run.stdout)
    assert seen["True-True"]["session_id_len"] == 32 and seen["True-True"]["client_ccs"]
    off = seen["False-False"]
    assert off == {"session_id_len": 0, "server_ccs": False, "client_ccs": False, "equal_ids": True}
    # Each end's choice is its own: a compat client still sends CCS to a non-compat server.
    assert seen["True-False"]["client_ccs"] and not seen["True-False"]["server_ccs"]
    assert seen["False-True"]["server_ccs"] and not seen["False-True"]["client_ccs"]


def test_threads_starting_at_once_share_one_client_context_and_one_identity() -> None:
    """A client with several connections at once: every core's SSL must come from the same
    SSL.Context (pyOpenSSL refuses a session made under another, so resumption would fail
    with ValueError), and every server core without an identity must share one (ticket keys)."""
    shared._client_context.cache_clear()
    shared._default_identity.cache_clear()
    barrier = threading.Barrier(16)
    contexts: list[SSL.Context] = []
    identities: list[ServerIdentity] = []

    def start() -> None:
        barrier.wait()
        contexts.append(shared.client_context(("TLS_AES_128_GCM_SHA256",), ("X25519",)))
        identities.append(shared.default_identity())

    threads = [threading.Thread(target=start) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(contexts) == len(identities) == 16
    assert len({id(c) for c in contexts}) == 1 and len({id(i) for i in identities}) == 1
