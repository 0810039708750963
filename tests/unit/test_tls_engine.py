"""TLS TEP core: two engines in memory (full handshakes, data, close, session IDs, profile)."""

from __future__ import annotations

import pytest

from testbed.teps import base
from testbed.teps.base import DataReceived, EndOfStream, HandshakeComplete, Role, TepContext
from testbed.teps.tls import (
    TLS_SPEC,
    ServerIdentity,
    TlsConfigError,
    TlsCore,
    TlsSessionCache,
    default_identity,
    register_all,
)
from testbed.teps.tls.constants import CIPHERSUITES, EXPORTER_LENGTH, TEP_BYTE
from testbed.teps.tls.pair import EXAMPLE_TRANSCRIPT, MemoryLink, tls_pair
from testbed.teps.tls.state import CALLS, TRANSITIONS, TlsState, check_call, check_transition


@pytest.fixture(scope="module")
def identity() -> ServerIdentity:
    return ServerIdentity()


def data_of(events: list[base.TepEvent]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataReceived))


def completes(events: list[base.TepEvent]) -> list[HandshakeComplete]:
    return [e for e in events if isinstance(e, HandshakeComplete)]


def exchange(link: MemoryLink, a_to_b: bytes, b_to_a: bytes) -> None:
    link.a.send_data(a_to_b)
    link.b.send_data(b_to_a)
    link.pump()


def test_full_handshake_data_both_ways_and_close(identity: ServerIdentity) -> None:
    link, a, b = tls_pair(server={"server_identity": identity})
    link.handshake()
    assert a.handshake_complete and b.handshake_complete
    (done_a,) = completes(link.a_events)
    (done_b,) = completes(link.b_events)
    assert done_a == HandshakeComplete(a.session_id or b"", resumed=False)
    assert done_a.early_data_accepted is None and not done_b.resumed
    exchange(link, b"request", b"response")
    assert data_of(link.b_events) == b"request"
    assert data_of(link.a_events) == b"response"
    a.close()
    link.pump()
    assert isinstance(link.b_events[-1], EndOfStream)
    assert a.state is TlsState.LOCAL_CLOSED and b.state is TlsState.REMOTE_CLOSED
    b.send_data(b"after A closed")  # TLS 1.3 half-close (RFC 8446 §6.1)
    b.close()
    link.pump()
    assert data_of(link.a_events) == b"responseafter A closed"
    assert isinstance(link.a_events[-1], EndOfStream)
    assert a.state is TlsState.CLOSED and b.state is TlsState.CLOSED
    assert a.peer_closed() == [] and b.peer_closed() == []


def test_first_data_leaves_in_the_flight_of_the_clients_finished(
    identity: ServerIdentity,
) -> None:
    # RFC 8446 §2: the client sends application data right after its Finished; with
    # first_data both leave in one data_to_send (one segment on the wire).
    link, a, b = tls_pair(client={"first_data": b"GET /"}, server={"server_identity": identity})
    link.start()
    link.step()  # ClientHello -> server; server's flight -> client
    assert a.handshake_complete and not b.handshake_complete
    flight = a.data_to_send()
    assert flight
    events = b.receive_data(flight, 0.0)
    assert completes(events) and data_of(events) == b"GET /"
    assert a.data_to_send() == b""  # nothing was held back for a second write
    link.pump()
    assert data_of(link.b_events) == b""  # sent once, not again


def test_session_ids_equal_33_bytes_and_start_with_tep_byte(identity: ServerIdentity) -> None:
    link, a, b = tls_pair(server={"server_identity": identity})
    assert a.session_id is None and b.session_id is None  # RFC 8547 §5.1: none before
    link.handshake()
    assert a.session_id == b.session_id
    assert a.session_id is not None
    assert len(a.session_id) == 1 + EXPORTER_LENGTH and a.session_id[:1] == TEP_BYTE


def test_fresh_session_id_per_connection(identity: ServerIdentity) -> None:
    ids = set()
    for _ in range(3):
        link, a, _ = tls_pair(server={"server_identity": identity})
        link.handshake()
        ids.add(a.session_id)
    assert len(ids) == 3


def test_different_transcripts_give_different_session_ids(identity: ServerIdentity) -> None:
    altered = EXAMPLE_TRANSCRIPT[:-1] + b"\x31"  # a middlebox rewrote B's suboption
    link, a, b = tls_pair(server={"server_identity": identity}, server_transcript=altered)
    link.handshake()
    assert a.handshake_complete and b.handshake_complete
    assert a.session_id != b.session_id


def test_plain_mode_ignores_transcript(identity: ServerIdentity) -> None:
    link, a, b = tls_pair(
        client={"mode": "plain"},
        server={"server_identity": identity, "mode": "plain"},
        transcript=b"one",
        server_transcript=b"two",
    )
    link.handshake()
    assert a.session_id == b.session_id
    eno_link, eno_a, _ = tls_pair(server={"server_identity": identity}, transcript=b"")
    eno_link.handshake()
    assert eno_a.session_id != a.session_id  # different connections anyway; both 33 bytes
    assert a.session_id is not None and len(a.session_id) == 33


@pytest.mark.parametrize("suite", CIPHERSUITES)
def test_every_cipher_suite(identity: ServerIdentity, suite: str) -> None:
    link, a, b = tls_pair(client={"ciphersuites": (suite,)}, server={"server_identity": identity})
    link.handshake()
    assert a.cipher_name == b.cipher_name == suite
    exchange(link, b"x" * 5000, b"y" * 7000)
    assert data_of(link.b_events) == b"x" * 5000
    assert data_of(link.a_events) == b"y" * 7000


@pytest.mark.parametrize(("group", "openssl_name"), [("X25519", "x25519"), ("P-256", "secp256r1")])
def test_each_group(identity: ServerIdentity, group: str, openssl_name: str) -> None:
    link, a, b = tls_pair(client={"groups": (group,)}, server={"server_identity": identity})
    link.handshake()
    assert a.group_name == b.group_name == openssl_name


def test_default_group_is_x25519_not_a_hybrid(identity: ServerIdentity) -> None:
    # OpenSSL's own default would be X25519MLKEM768, outside the profile.
    link, a, _ = tls_pair(server={"server_identity": identity})
    link.handshake()
    assert a.group_name == "x25519"


@pytest.mark.parametrize("key_type", ["ecdsa-p256", "ed25519"])
def test_server_key_types_and_pinning_ok(key_type: str) -> None:
    identity = ServerIdentity(key_type)
    pins = {identity.spki_sha256, bytes(32)}
    link, a, b = tls_pair(client={"pin_spki_sha256": pins}, server={"server_identity": identity})
    link.handshake()
    assert a.handshake_complete and b.handshake_complete
    assert a.session_id == b.session_id


def test_split_delivery_byte_by_byte(identity: ServerIdentity) -> None:
    link, a, b = tls_pair(server={"server_identity": identity}, split=1)
    link.handshake()
    exchange(link, b"segmented", b"reply")
    assert a.session_id == b.session_id
    assert data_of(link.b_events) == b"segmented" and data_of(link.a_events) == b"reply"


def test_data_queued_before_handshake_is_sent_after_it(identity: ServerIdentity) -> None:
    link, a, b = tls_pair(server={"server_identity": identity})
    link.start()
    a.send_data(b"queued")
    b.send_data(b"also queued")
    a.close()  # takes effect once the handshake is done
    link.pump()
    assert data_of(link.b_events) == b"queued"
    assert data_of(link.a_events) == b"also queued"
    assert isinstance(link.b_events[-1], EndOfStream)
    # No application record before the handshake completes (use-tls-00):
    first_flight = link.wire[0][1]
    assert first_flight[0] == 22 and b"queued" not in first_flight


def test_default_server_identity_is_one_per_process() -> None:
    assert default_identity() is default_identity()
    assert not default_identity().resumption  # use-tls-00 forbids resumption
    for _ in range(2):
        link, a, b = tls_pair()
        link.handshake()
        assert a.handshake_complete and a.session_id == b.session_id


# --- options ---------------------------------------------------------------------------------


def test_unknown_option_refused() -> None:
    with pytest.raises(TlsConfigError, match="early_date"):
        TlsCore(TepContext(role=Role.A, transcript=b"", options={"early_date": b"x"}))


@pytest.mark.parametrize(
    ("role", "options"),
    [
        (Role.B, {"pin_spki_sha256": bytes(32)}),
        (Role.A, {"half_rtt_data": True}),
        (Role.A, {"ciphersuites": ("TLS_AES_128_CCM_SHA256",)}),
        (Role.A, {"groups": ("X448",)}),
        (Role.A, {"pin_spki_sha256": b"short"}),
        (Role.A, {"mode": "dtls"}),
        (Role.A, {"early_data": b"needs a cache"}),
        (Role.B, {"half_rtt_data": True}),
        (Role.B, {"first_data": b"client only"}),
        (Role.A, {"first_data": "not bytes"}),
        (Role.A, {"first_data": b"x", "early_data": b"y", "session_cache": TlsSessionCache()}),
    ],
)
def test_bad_options_refused(role: Role, options: dict[str, object]) -> None:
    with pytest.raises(TlsConfigError):
        TlsCore(TepContext(role=role, transcript=b"", options=options))


def test_early_data_identity_needs_resumption() -> None:
    with pytest.raises(ValueError, match="resumption"):
        ServerIdentity(max_early_data=100)


def test_session_cache_is_single_use() -> None:
    cache = TlsSessionCache(max_per_peer=2)
    assert cache.take("p") is None
    link, a, b = tls_pair(
        client={"session_cache": cache, "session_peer": "p"},
        server={"server_identity": ServerIdentity(resumption=True)},
    )
    link.handshake()
    assert cache.count("p") == 1 and len(cache) == 1
    assert cache.take("p") is not None and cache.take("p") is None


# --- registration and state tables -----------------------------------------------------------


def test_spec_is_labelled_non_standard() -> None:
    assert TLS_SPEC.tep_id == 0x30 and TLS_SPEC.name == "tls"
    assert TLS_SPEC.standard is False and TLS_SPEC.label == "non-standard TEP id"
    core = TLS_SPEC.factory(TepContext(role=Role.A, transcript=b""))
    assert isinstance(core, TlsCore)


def test_register_all_is_explicit_and_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "_REGISTRY", {})
    assert base.by_id(0x30) is None  # importing the package registered nothing
    assert register_all() == [TLS_SPEC]
    assert register_all() == [TLS_SPEC]
    assert base.get("tls") is TLS_SPEC


def test_transition_table_refuses_every_other_change() -> None:
    for old in TlsState:
        for new in TlsState:
            if new in TRANSITIONS[old]:
                check_transition(old, new)
            else:
                with pytest.raises(base.LocalProtocolError):
                    check_transition(old, new)
    assert TRANSITIONS[TlsState.ERROR] == frozenset()


def test_call_table_refuses_calls_out_of_place() -> None:
    for method, allowed in CALLS.items():
        for state in TlsState:
            if state is TlsState.ERROR:
                with pytest.raises(base.TepStateError):
                    check_call(method, state)
            elif state in allowed:
                check_call(method, state)
            else:
                with pytest.raises(base.LocalProtocolError):
                    check_call(method, state)


def test_misuse_raises_and_then_every_call_is_a_state_error() -> None:
    core = TlsCore(TepContext(role=Role.B, transcript=b""))
    with pytest.raises(base.LocalProtocolError, match="not allowed"):
        core.receive_data(b"\x16", 0.0)  # before start()
    assert core.state is TlsState.ERROR
    with pytest.raises(base.TepStateError):
        core.start(0.0)
    with pytest.raises(base.TepStateError):
        core.data_to_send()


def test_send_after_close_is_local_error(identity: ServerIdentity) -> None:
    link, a, _ = tls_pair(server={"server_identity": identity})
    link.handshake()
    a.close()
    a.close()  # a second close is a no-op
    with pytest.raises(base.LocalProtocolError):
        a.send_data(b"late")
    with pytest.raises(base.TepStateError):
        a.send_data(b"later")
