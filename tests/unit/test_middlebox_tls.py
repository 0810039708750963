"""dpi-443 and tls12-strict on real OpenSSL handshake bytes and on crafted packets."""

from __future__ import annotations

from typing import Any

import pytest
from OpenSSL import SSL
from scapy.layers.inet import IP, TCP

from middleboxes.proxy import tls_contexts
from middleboxes.tlsboxes import Dpi443, Tls12Strict
from middleboxes.tlsparse import (
    TRANSITIONS,
    State,
    Tls12Follower,
    TlsParseError,
    looks_like_client_hello,
    parse_client_hello,
    parse_server_hello,
)

Transcript = list[tuple[bool, bytes]]  # (from_client, bytes) in the order they were sent


def _drain(conn: SSL.Connection) -> bytes:
    out = b""
    while True:
        try:
            out += conn.bio_read(65536)
        except SSL.WantReadError:
            return out


def _step(conn: SSL.Connection) -> None:
    try:
        conn.do_handshake()
    except SSL.WantReadError:
        return


def transcript(max_version: int = SSL.TLS1_3_VERSION, compat: bool = True,
               session: Any = None, server_ctx: Any = None, client_ctx: Any = None,
               server_ccs: bool = False) -> tuple[Transcript, Any]:
    """A whole handshake plus one request/response, through memory BIOs.

    OpenSSL's compatibility mode (RFC 8446 appendix D.4) is on by default and the binding
    here cannot clear SSL_OP_ENABLE_MIDDLEBOX_COMPAT, so ``compat=False`` edits the
    transcript into what a client without it sends (``s_client -no_middlebox``): an empty
    legacy_session_id, which the server echoes, and no client ChangeCipherSpec. RFC 8446
    leaves the server's dummy ChangeCipherSpec optional then; ``server_ccs`` keeps it.
    """
    server_ctx = server_ctx or tls_contexts()[0]
    if client_ctx is None:
        client_ctx = SSL.Context(SSL.TLS_METHOD)
        client_ctx.set_max_proto_version(max_version)
    client = SSL.Connection(client_ctx, None)
    if session is not None:
        client.set_session(session)
    client.set_connect_state()
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    chunks: Transcript = []
    for _ in range(6):
        for conn, peer, from_client in ((client, server, True), (server, client, False)):
            _step(conn)
            data = _drain(conn)
            if data:
                chunks.append((from_client, data))
                peer.bio_write(data)
    client.send(b"GET / HTTP/1.0\r\n\r\n")
    chunks.append((True, _drain(client)))
    server.bio_write(chunks[-1][1])
    server.recv(100)
    server.send(b"HTTP/1.0 200 OK\r\n\r\n")
    chunks.append((False, _drain(server)))
    client.bio_write(chunks[-1][1])
    client.recv(100)
    # A clean close keeps the session resumable: OpenSSL drops sessions of connections
    # freed without close_notify from the cache.
    server.shutdown()
    client.shutdown()
    if not compat:
        chunks = [(c, without_compat(data, c, server_ccs)) for c, data in chunks]
    return chunks, client.get_session()


def records(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        length = int.from_bytes(data[pos + 3:pos + 5], "big")
        out.append((data[pos], data[pos:pos + 5 + length]))
        pos += 5 + length
    return out


def _empty_session_id(record: bytes, at: int) -> bytes:
    """Remove the session_id whose length byte is at ``at`` of the handshake body."""
    body = record[9:]
    sid_len = body[at]
    body = body[:at] + b"\x00" + body[at + 1 + sid_len:]
    handshake = record[5:6] + len(body).to_bytes(3, "big") + body
    return record[:3] + len(handshake).to_bytes(2, "big") + handshake


def without_compat(data: bytes, from_client: bool, server_ccs: bool) -> bytes:
    out = b""
    for ctype, record in records(data):
        if ctype == 20 and (from_client or not server_ccs):
            continue  # the dummy ChangeCipherSpec of compatibility mode
        if ctype == 22 and record[5] in (1, 2):  # ClientHello / ServerHello
            record = _empty_session_id(record, 34)  # after version (2) and random (32)
        out += record
    return out


def follow(chunks: Transcript, bytewise: bool = False) -> Tls12Follower:
    box = Tls12Follower()
    for from_client, data in chunks:
        pieces = [data[i:i + 1] for i in range(len(data))] if bytewise else [data]
        for piece in pieces:
            box.feed(from_client, piece)
    return box


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "byte-by-byte"])
def test_tls12_full_handshake_passes(bytewise: bool) -> None:
    chunks, _ = transcript(SSL.TLS1_2_VERSION)
    box = follow(chunks, bytewise)
    assert box.opaque and box.error is None


def test_tls12_resumption_walks_the_abbreviated_handshake() -> None:
    server_ctx = tls_contexts()[0]
    server_ctx.set_options(SSL.OP_NO_TICKET)  # session-ID resumption: the ID is echoed
    server_ctx.set_session_id(b"tcpinc-test")
    client_ctx = SSL.Context(SSL.TLS_METHOD)
    client_ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    _, session = transcript(server_ctx=server_ctx, client_ctx=client_ctx)
    chunks, _ = transcript(session=session, server_ctx=server_ctx, client_ctx=client_ctx)
    box = Tls12Follower()
    box.feed(True, chunks[0][1])
    box.feed(False, chunks[1][1])
    assert box.server.state is State.OPAQUE  # ServerHello echoed the ID, then CCS
    assert box.offered_session_id


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "byte-by-byte"])
def test_tls13_with_middlebox_compat_passes(bytewise: bool) -> None:
    chunks, _ = transcript(compat=True)
    box = follow(chunks, bytewise)
    assert box.opaque and len(box.offered_session_id) == 32


@pytest.mark.parametrize("server_ccs,reason", [
    (False, "server: application_data before ChangeCipherSpec in server_certs"),
    (True, "server: unexpected ChangeCipherSpec in server_certs"),
])
def test_tls13_without_compat_is_killed_right_after_server_hello(server_ccs: bool,
                                                                 reason: str) -> None:
    chunks, _ = transcript(compat=False, server_ccs=server_ccs)
    box = Tls12Follower()
    box.feed(True, chunks[0][1])
    assert box.offered_session_id == b""
    with pytest.raises(TlsParseError, match=reason):
        box.feed(False, chunks[1][1])
    with pytest.raises(TlsParseError, match="already failed"):
        box.feed(True, b"\x17")


def test_fuzz_prefixes_parse_or_raise_our_error() -> None:
    """Every prefix and every single-byte corruption: it follows, or TlsParseError."""
    chunks, _ = transcript(compat=False)
    stream = chunks[1][1][:300]
    for cut in range(len(stream)):
        for mutate in (None, cut):
            data = bytearray(stream[:cut + 1])
            if mutate is not None:
                data[mutate] ^= 0xFF
            box = Tls12Follower()
            box.feed(True, chunks[0][1])
            try:
                box.feed(False, bytes(data))
            except TlsParseError:
                continue


def test_every_transition_not_in_the_table_is_refused() -> None:
    events = {event for _, event in TRANSITIONS}
    for state in State:
        if state is State.OPAQUE:
            continue
        for event in events:
            side = Tls12Follower().client
            side.state = state
            if (state, event) in TRANSITIONS:
                Tls12Follower._step(side, event)
                assert side.state is TRANSITIONS[(state, event)]
            else:
                with pytest.raises(TlsParseError, match="unexpected"):
                    Tls12Follower._step(side, event)


@pytest.mark.parametrize("record,reason", [
    (b"\x18\x03\x03\x00\x01\x00", "content type 24"),
    (b"\x16\x03\x04\x00\x01\x00", "record version 3.4"),
    (b"\x16\x04\x01\x00\x01\x00", "record version 4.1"),
    (b"\x16\x03\x01\x48\x01", "record length 18433"),
    (b"GET / HTTP/1.1\r\n", "content type 71"),
    (b"\x17\x03\x03\x00\x01\x00", "application_data before ChangeCipherSpec"),
    (b"\x14\x03\x03\x00\x01\x01", "unexpected ChangeCipherSpec"),
])
def test_records_the_box_cannot_parse(record: bytes, reason: str) -> None:
    with pytest.raises(TlsParseError, match=reason):
        Tls12Follower().feed(True, record)


def test_hello_structure_checks() -> None:
    chunks, _ = transcript()
    hello = chunks[0][1][9:]  # record header 5, handshake header 4
    assert len(parse_client_hello(hello)) == 32
    with pytest.raises(TlsParseError, match="truncated"):
        parse_client_hello(hello[:50])
    with pytest.raises(TlsParseError, match="after the extensions"):
        parse_client_hello(hello + b"\0")
    server_hello = bytes([0x7F, 0x12]) + bytes(32) + b"\x00" + b"\x13\x01" + b"\x00"
    with pytest.raises(TlsParseError, match="0x7f12 is not TLS 1.2"):
        parse_server_hello(server_hello)  # a draft-18 TLS 1.3 server
    assert parse_server_hello(bytes([3, 3]) + bytes(32) + b"\x00\x13\x01\x00") == b""


def test_client_hello_sniff() -> None:
    chunks, _ = transcript()
    assert looks_like_client_hello(chunks[0][1])
    for version in (1, 2, 3):
        assert looks_like_client_hello(bytes([22, 3, version, 0, 50, 1]))
    for other in (b"GET / H", b"SSH-2.0-", bytes([22, 3, 4, 0, 5, 1]),
                  bytes([22, 3, 1, 0, 5, 2]), bytes([22, 3, 1, 0, 5])):
        assert not looks_like_client_hello(other)


# -- the packet models ---------------------------------------------------------------------

CLIENT, SERVER = ("10.0.1.1", 40000), ("10.0.2.2", 443)


def pkt(flags: str, seq: int, ack: int, payload: bytes = b"", c2s: bool = True) -> bytes:
    src, dst = (CLIENT, SERVER) if c2s else (SERVER, CLIENT)
    raw = IP(src=src[0], dst=dst[0]) / TCP(sport=src[1], dport=dst[1], seq=seq, ack=ack,
                                           flags=flags)
    return bytes(raw / payload) if payload else bytes(raw)


def handshake(box: Any) -> None:
    for raw in (pkt("S", 99, 0), pkt("SA", 499, 100, c2s=False), pkt("A", 100, 500)):
        assert box.process(raw, 0).accept


def test_dpi_resets_non_tls_both_ways_with_exact_sequence_numbers() -> None:
    box = Dpi443()
    handshake(box)
    banner = pkt("PA", 500, 100, b"SRV", c2s=False)  # server talks first: not judged
    assert box.process(banner, 0).accept
    decision = box.process(pkt("PA", 100, 503, b"GET / HTTP/1.1\r\n"), 0)
    assert not decision.accept and box.counters.reset == 1
    to_server, to_client = (IP(x) for x in decision.inject)
    assert (to_server.src, to_server.dst, to_server[TCP].seq) == ("10.0.1.1", "10.0.2.2", 100)
    assert (to_client.src, to_client.dst, to_client[TCP].seq) == ("10.0.2.2", "10.0.1.1", 503)
    assert str(to_server[TCP].flags) == "RA" and str(to_client[TCP].flags) == "RA"
    assert not box.process(pkt("A", 503, 100, c2s=False), 0).accept  # flow stays dead
    assert "474554" in box.kill_reasons[0]


def test_dpi_waits_for_six_bytes_and_lets_tls_through() -> None:
    box = Dpi443()
    handshake(box)
    hello = transcript()[0][0][1]
    assert box.process(pkt("PA", 100, 500, hello[:3]), 0).accept
    assert box.process(pkt("PA", 103, 500, hello[3:]), 0).accept
    assert box.process(pkt("PA", 100 + len(hello), 500, b"anything"), 0).accept
    assert box.counters.reset == 0


def test_dpi_ignores_other_ports() -> None:
    box = Dpi443(port=8443)
    assert box.process(pkt("PA", 100, 500, b"not tls at all"), 0).accept
    assert box.counters.reset == 0


def test_tls12_strict_packet_model_kills_tls13_without_compat() -> None:
    for compat, killed in ((True, False), (False, True)):
        chunks, _ = transcript(compat=compat)
        box = Tls12Strict()
        handshake(box)
        seqs = {True: 100, False: 500}
        verdicts = []
        for from_client, data in chunks:
            raw = pkt("PA", seqs[from_client], seqs[not from_client], data, c2s=from_client)
            seqs[from_client] += len(data)
            verdicts.append(box.process(raw, 0).accept)
        assert (box.counters.reset == 1) is killed
        assert all(verdicts) is not killed
