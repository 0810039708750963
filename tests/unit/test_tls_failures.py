"""TLS TEP failure handling: alerts named, tampering caught, truncation reported, no plaintext."""

from __future__ import annotations

import random

import pytest
from OpenSSL import SSL

from testbed.teps import base
from testbed.teps.base import DataReceived, HandshakeComplete, Role, TepContext
from testbed.teps.tls import ServerIdentity, TlsAlertError, TlsCore, TlsIntegrityError
from testbed.teps.tls.pair import tls_pair
from testbed.teps.tls.state import TlsState


@pytest.fixture(scope="module")
def identity() -> ServerIdentity:
    return ServerIdentity()


def flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


def assert_dead(core: TlsCore) -> None:
    assert core.state is TlsState.ERROR
    for call in (core.data_to_send, core.peer_closed, core.close, lambda: core.send_data(b"x")):
        with pytest.raises(base.TepStateError):
            call()
    with pytest.raises(base.TepStateError):
        core.receive_data(b"\x17\x03\x03\x00\x01\x00", 0.0)


def test_pin_mismatch_aborts_with_named_alert(identity: ServerIdentity) -> None:
    link, a, b = tls_pair(
        client={"pin_spki_sha256": bytes(32)}, server={"server_identity": identity}
    )
    link.start()
    b.receive_data(a.data_to_send(), 0.0)
    with pytest.raises(TlsAlertError, match="pin_spki_sha256") as caught:
        a.receive_data(b.data_to_send(), 0.0)
    error = caught.value
    assert not isinstance(error, base.IntegrityError)
    assert error.alert_sent and error.alert is not None and error.code == error.alert
    assert "sent to peer" in str(error)
    assert error.unsent  # the alert record, for the stream layer to write before teardown
    assert_dead(a)
    with pytest.raises(base.RemoteProtocolError, match=r"peer sent TLS fatal alert \w+\(\d+\)"):
        b.receive_data(error.unsent, 0.0)
    assert_dead(b)
    assert not a.handshake_complete and a.session_id is None


def test_tampered_application_record_is_integrity_error(identity: ServerIdentity) -> None:
    link, a, b = tls_pair(server={"server_identity": identity})
    link.handshake()
    a.send_data(b"secret one")
    a.send_data(b"secret two")
    record = a.data_to_send()
    with pytest.raises(base.IntegrityError, match=r"bad_record_mac\(20\)") as caught:
        b.receive_data(flip_last_byte(record), 0.0)
    assert isinstance(caught.value, TlsIntegrityError) and caught.value.code == 20
    assert_dead(b)
    # The peer learns why: the alert makes it fail the same way.
    with pytest.raises(base.IntegrityError, match="peer sent TLS fatal alert bad_record_mac"):
        a.receive_data(caught.value.unsent, 0.0)


def test_tamper_in_one_of_two_records_delivers_nothing(identity: ServerIdentity) -> None:
    link, a, b = tls_pair(server={"server_identity": identity})
    link.handshake()
    a.send_data(b"first")
    good = a.data_to_send()
    a.send_data(b"second")
    bad = flip_last_byte(a.data_to_send())
    delivered: list[base.TepEvent] = []
    with pytest.raises(base.IntegrityError):
        delivered += b.receive_data(good + bad, 0.0)
    assert delivered == []


def test_tampered_server_flight_fails_handshake(identity: ServerIdentity) -> None:
    def tamper(direction: str, data: bytes) -> bytes:
        return flip_last_byte(data) if direction == "b->a" else data

    link, a, b = tls_pair(server={"server_identity": identity}, tamper=tamper)
    link.start()
    a.send_data(b"never sent in the clear")
    with pytest.raises(base.IntegrityError, match="bad_record_mac"):
        link.pump()
    assert not any(isinstance(e, HandshakeComplete | DataReceived) for e in link.a_events)
    assert all(b"never sent" not in data for _, data in link.wire)


def test_tampered_client_hello_random_fails_handshake(identity: ServerIdentity) -> None:
    def tamper(direction: str, data: bytes) -> bytes:
        if direction == "a->b" and data[0] == 22 and data[5] == 1:
            # Byte 11 is inside ClientHello.random: keys diverge (RFC 8446 §7.1 transcript).
            return data[:11] + bytes([data[11] ^ 0xFF]) + data[12:]
        return data

    link, a, b = tls_pair(server={"server_identity": identity}, tamper=tamper)
    with pytest.raises(base.IntegrityError):
        link.handshake()
    assert not a.handshake_complete


def test_fin_before_close_notify_is_truncation(identity: ServerIdentity) -> None:
    link, a, b = tls_pair(server={"server_identity": identity})
    link.handshake()
    a.send_data(b"partial")
    link.pump()
    with pytest.raises(base.TruncationError, match="close_notify"):
        b.peer_closed()
    assert_dead(b)


def test_fin_during_handshake_is_truncation() -> None:
    core = TlsCore(TepContext(role=Role.A, transcript=b""))
    core.start(0.0)
    assert core.data_to_send()[0] == 22  # the ClientHello
    with pytest.raises(base.TruncationError):
        core.peer_closed()


def test_fin_after_our_close_but_before_peers_is_truncation(identity: ServerIdentity) -> None:
    link, a, b = tls_pair(server={"server_identity": identity})
    link.handshake()
    a.close()
    link.pump()
    with pytest.raises(base.TruncationError):
        a.peer_closed()


def test_bytes_after_close_notify_are_ignored(identity: ServerIdentity) -> None:
    link, a, b = tls_pair(server={"server_identity": identity})
    link.handshake()
    a.close()
    link.pump()
    assert b.receive_data(b"\x17\x03\x03\x00\x05junk!", 0.0) == []
    assert b.state is TlsState.REMOTE_CLOSED


def test_cipher_suite_mismatch_names_handshake_failure() -> None:
    server_identity = ServerIdentity(ciphersuites=("TLS_AES_256_GCM_SHA384",))
    link, a, b = tls_pair(
        client={"ciphersuites": ("TLS_AES_128_GCM_SHA256",)},
        server={"server_identity": server_identity},
    )
    link.start()
    with pytest.raises(TlsAlertError, match=r"handshake_failure\(40\) sent") as caught:
        b.receive_data(a.data_to_send(), 0.0)
    with pytest.raises(TlsAlertError, match=r"peer sent TLS fatal alert handshake_failure\(40\)"):
        a.receive_data(caught.value.unsent, 0.0)


def test_tls12_only_peer_gets_protocol_version(identity: ServerIdentity) -> None:
    # A client written against pyOpenSSL directly, limited to TLS 1.2 (RFC 8446 §4.2.1).
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    old = SSL.Connection(ctx)
    old.set_connect_state()
    with pytest.raises(SSL.WantReadError):
        old.do_handshake()
    server = TlsCore(TepContext(role=Role.B, transcript=b"", options={"server_identity": identity}))
    server.start(0.0)
    with pytest.raises(TlsAlertError, match=r"protocol_version\(70\)"):
        server.receive_data(old.bio_read(65536), 0.0)


def test_not_tls_at_all_is_remote_error_without_events(identity: ServerIdentity) -> None:
    server = TlsCore(TepContext(role=Role.B, transcript=b"", options={"server_identity": identity}))
    server.start(0.0)
    with pytest.raises(base.RemoteProtocolError):
        server.receive_data(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n", 0.0)
    assert_dead(server)


@pytest.mark.parametrize("byte_by_byte", [False, True])
@pytest.mark.parametrize("role", [Role.A, Role.B])
def test_fuzz_parses_or_raises_remote_protocol_error(
    identity: ServerIdentity, role: Role, byte_by_byte: bool
) -> None:
    rng = random.Random(8446)
    options = {"server_identity": identity} if role is Role.B else {}
    for _ in range(40):
        core = TlsCore(TepContext(role=role, transcript=b"", options=options))
        core.start(0.0)
        core.data_to_send()
        # Half the inputs start like a TLS handshake record so parsing goes deeper.
        head = bytes([22, 3, 3]) if rng.random() < 0.5 else b""
        blob = head + rng.randbytes(rng.randrange(1, 300))
        pieces = [blob[i : i + 1] for i in range(len(blob))] if byte_by_byte else [blob]
        try:
            for piece in pieces:
                events = core.receive_data(piece, 0.0)
                assert not any(isinstance(e, DataReceived) for e in events)
        except base.RemoteProtocolError:
            assert core.state is TlsState.ERROR
