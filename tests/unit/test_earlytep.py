"""The active opener's TEP core made while the SYN is on its way (testbed/earlytep.py)."""

from __future__ import annotations

import socket

import pytest

from testbed.apps import proto_tcpcrypt, proto_tls
from testbed.earlytep import connect_preparing, early_core
from testbed.eno.control import Result
from testbed.stream import Stream, StreamConfig, StreamInfo, establish
from testbed.teps import base
from testbed.teps.base import Role
from testbed.teps.tcpcrypt.constants import INIT1_MAGIC
from tests.unit.test_stream import both, tcp_pair

TLS_ARM = proto_tls.TlsArm(name="tls", eno=True)
CONFIGS = {
    0x30: StreamConfig(teps=("tls",), handshake_timeout=5,
                       providers={"tls": proto_tls.TlsProvider(TLS_ARM)}),
    0x23: StreamConfig(teps=("tcpcrypt-x25519",), handshake_timeout=5,
                       providers={"tcpcrypt-x25519": proto_tcpcrypt.FRESH_PROVIDER}),
}


def negotiated(role: str, tep_id: int, peer_data: str = "") -> Result:
    transcript = f"4503{tep_id:02x}450401{tep_id:02x}"
    return Result(local=("127.0.0.1", 1), remote=("127.0.0.1", 2), active=role == "A",
                  state="enabled", outcome="negotiated", role=role, tep_id=tep_id,
                  tep_byte=tep_id, transcript=transcript, peer_data=peer_data)


@pytest.mark.parametrize("tep_id", sorted(CONFIGS))
def test_the_early_core_carries_the_handshake_with_the_late_transcript(tep_id: int) -> None:
    config = CONFIGS[tep_id]
    sa, sb = tcp_pair()
    early = early_core(config, sa, ("127.0.0.1", 2))
    assert early is not None and early.driver.started
    # Made before any result: a TLS handshake record (ClientHello) or Init1 (RFC 8548 §4.1).
    first = early.driver.core.data_to_send()
    assert first.startswith(b"\x16\x03" if tep_id == 0x30 else INIT1_MAGIC.to_bytes(4, "big"))
    sa.sendall(first)  # taken out to look at it: sent here instead of by the driver

    def a_side(sock: socket.socket) -> Stream:
        result = negotiated("A", tep_id)
        assert early.fits(early.spec, Role.A, result)
        return establish(sock, result, config, StreamInfo(policy="opportunistic"),
                         active=True, early=early)

    def b_side(sock: socket.socket) -> Stream:
        return establish(sock, negotiated("B", tep_id), config,
                         StreamInfo(policy="opportunistic"), active=False)

    a, b = both(a_side, b_side, (sa, sb))
    assert isinstance(a, Stream) and isinstance(b, Stream), (a, b)
    # Equal session IDs: the transcript reached the early core before its keys (RFC 8547 §4.8).
    assert a.session_id == b.session_id and a.tep_driver is early.driver
    a.sendall(b"early")
    assert b.recv(10) == b"early"
    a.close()
    b.close()


def test_an_early_core_is_dropped_when_the_negotiation_differs() -> None:
    config = CONFIGS[0x23]
    with socket.socket() as sock:
        early = early_core(config, sock, ("127.0.0.1", 2))
        assert early is not None
        assert not early.fits(early.spec, Role.B, negotiated("B", 0x23))
        assert not early.fits(early.spec, Role.A, negotiated("A", 0x23, peer_data="aa"))
        assert not early.fits(base.get("tcpcrypt-x448"), Role.A, negotiated("A", 0x24))
        assert early.fits(early.spec, Role.A, negotiated("A", 0x23))


def test_only_providers_that_can_say_their_options_early_get_one() -> None:
    with socket.socket() as sock:
        assert early_core(StreamConfig(teps=("eno-test",)), sock, ("127.0.0.1", 2)) is None
        resuming = StreamConfig(teps=("tcpcrypt-x25519",),
                                providers={"tcpcrypt-x25519": proto_tcpcrypt.HOST_PROVIDER})
        assert early_core(resuming, sock, ("127.0.0.1", 2)) is None


def test_connect_preparing_reports_a_refusal_and_keeps_the_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        address = server.getsockname()
        with socket.create_connection(address) as probe:
            probe.close()
        sock = socket.socket()
        sock.settimeout(3.0)
        early = connect_preparing(sock, address, CONFIGS[0x30])
        assert early is not None and sock.gettimeout() == 3.0
        assert sock.getpeername() == address
        sock.close()
    refused = socket.socket()
    with pytest.raises(ConnectionRefusedError):
        connect_preparing(refused, address, CONFIGS[0x30])  # the server is gone
    refused.close()
