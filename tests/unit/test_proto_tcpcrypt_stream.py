"""tcpcrypt through the stream layer over loopback TCP, with the hook's verdicts given directly.

Covers what the namespace tests cannot force: a resumed session set up by ``establish`` from
the providers' state, a provider error (the secret an answer named is gone) resetting the
connection, and a passive end whose hook never judged the first ACK segment.
"""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from testbed.apps import proto_tcpcrypt as pt
from testbed.eno.control import Result
from testbed.stream import (
    Stream,
    StreamConfig,
    StreamInfo,
    TepFailure,
    UndecidedEnoError,
    establish,
)
from testbed.teps import base
from tests.unit.test_proto_tcpcrypt import CLIENT, SERVER, Hosts

SPEC = base.get("tcpcrypt-x25519")


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname(), timeout=5)
        peer, _ = server.accept()
        peer.settimeout(5)
    return client, peer


def verdict(active: bool, local_data: bytes = b"", peer_data: bytes = b"",
            resumed: bool = False) -> Result:
    local, remote = (CLIENT, SERVER) if active else (SERVER, CLIENT)
    tep_byte = SPEC.tep_id | (0x80 if resumed else 0)
    return Result(local=local, remote=remote, active=active, state="enabled",
                  outcome="negotiated", role="A" if active else "B", tep_id=SPEC.tep_id,
                  tep_byte=tep_byte, transcript="45032345040123",
                  local_data=local_data.hex(), peer_data=peer_data.hex())


def both(a: Any, b: Any) -> tuple[Any, Any]:
    """Run establish() at both ends of a loopback pair; exceptions are returned."""
    sa, sb = tcp_pair()

    def run(make: Any, sock: socket.socket) -> Any:
        try:
            return make(sock)
        except Exception as exc:  # the test inspects it
            return exc

    with ThreadPoolExecutor(2) as pool:
        fa, fb = pool.submit(run, a, sa), pool.submit(run, b, sb)
        return fa.result(10), fb.result(10)


def end(result: Result, provider: pt.TcpcryptProvider) -> Any:
    config = StreamConfig(teps=(SPEC.name,), providers={SPEC.name: provider},
                          handshake_timeout=3)

    def make(sock: socket.socket) -> Stream:
        info = StreamInfo(policy=config.policy.value)
        return establish(sock, result, config, info, active=result.active)

    return make


def offer_and_answer(hosts: Hosts) -> tuple[bytes, bytes]:
    syn = hosts.client.suboption_data(SPEC, active=True, peer=SERVER) or b""
    return syn, hosts.hook.syn(syn)


def seeded() -> Hosts:
    """Providers whose caches hold the secrets of one fresh session (made in memory); the
    addresses in the verdicts only name the peers, the bytes go over loopback."""
    hosts = Hosts()
    hosts.connect()
    return hosts


def test_a_resumed_stream_over_loopback() -> None:
    hosts = seeded()
    syn, answer = offer_and_answer(hosts)
    assert syn and answer
    a, b = both(end(verdict(True, syn, answer, resumed=True), hosts.client),
                end(verdict(False, answer, syn, resumed=True), hosts.server))
    assert isinstance(a, Stream) and isinstance(b, Stream), (a, b)
    assert a.info.resumed and b.info.resumed  # keys at start(), no Init1/Init2 (§3.5)
    assert a.session_id == b.session_id and a.session_id[0] == 0x80 | SPEC.tep_id
    a.sendall(b"request")
    assert b.recv(100) == b"request"
    b.sendall(b"response")
    assert a.recv(100) == b"response"
    assert pt.tcpcrypt_keys(a.info, 8)["eno_option_bytes"] == [3, 4]
    a.close()
    b.close()


def test_a_resumption_secret_gone_at_accept_resets_the_connection() -> None:
    hosts = seeded()
    syn, answer = offer_and_answer(hosts)
    assert hosts.server.cache is not None
    hosts.server.cache.clear()  # evicted between the SYN and accept()
    a, b = both(end(verdict(True, syn, answer, resumed=True), hosts.client),
                end(verdict(False, answer, syn, resumed=True), hosts.server))
    assert isinstance(b, TepFailure) and "no longer cached" in str(b)
    assert isinstance(a, Stream)  # A resumed at once; its first send or read meets the reset
    with pytest.raises((TepFailure, OSError)):
        a.sendall(b"request")
        a.recv(100)


def test_a_passive_end_without_a_verdict_resets_instead_of_reading_plaintext() -> None:
    """Our SYN-ACK carried ENO but the hook missed the first ACK segment: the peer may have
    enabled encryption (RFC 8547 §4.6), so its bytes must not reach the application."""
    undecided = Result(local=SERVER, remote=CLIENT, active=False, state="synack_sent",
                       packets=2)

    def a_side(sock: socket.socket) -> bytes:
        sock.sendall(b"\x17ciphertext")
        return sock.recv(10)

    a, b = both(a_side, end(undecided, pt.FRESH_PROVIDER))
    assert isinstance(b, UndecidedEnoError) and "no verdict" in str(b)
    assert isinstance(a, ConnectionResetError) or a == b""
