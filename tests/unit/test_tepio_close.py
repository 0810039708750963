"""TepDriver ``close_write`` on a core whose handshake is still under way.

A TLS server that answered 0-RTT data at 0.5-RTT (RFC 8446 §2.3) and closes before the
client's Finished came: its close_notify and its NewSessionTicket can only follow the
handshake, so the FIN must wait for them. Real TLS cores over a socket pair, the client driven
by hand so every byte it reads is seen.
"""

from __future__ import annotations

import socket
import threading

from testbed.tepio import TepDriver
from testbed.teps.base import DataReceived, EndOfStream, Role, TepContext, TepEvent
from testbed.teps.tls import ServerIdentity, TlsSessionCache
from testbed.teps.tls.constants import HS_NEW_SESSION_TICKET
from testbed.teps.tls.core import TlsCore
from testbed.teps.tls.pair import EXAMPLE_TRANSCRIPT, tls_pair

REQUEST = b"GET / early"
RESPONSE = b"answered at 0.5-RTT"


def _ticket(identity: ServerIdentity) -> TlsSessionCache:
    """A cache holding one ticket of ``identity`` (a full handshake in memory)."""
    cache = TlsSessionCache()
    link, a, b = tls_pair(client={"session_cache": cache},
                          server={"server_identity": identity})
    link.handshake()
    a.close()
    b.close()
    link.pump()
    assert len(cache) == 1
    return cache


def _serve(driver: TepDriver, errors: list[BaseException]) -> None:
    try:
        assert driver.run_until_data(5) is None  # 0-RTT data came before the Finished
        assert driver.recv(len(REQUEST)) == REQUEST
        driver.send(RESPONSE)
        driver.close_write()  # the Finished has not come yet
    except BaseException as exc:  # reported by the test thread
        errors.append(exc)


def _read_to_eof(core: TlsCore, sock: socket.socket) -> list[TepEvent]:
    """Everything the client core makes of the server's bytes until TCP's FIN; its own
    answers (its Finished) go back at once."""
    events: list[TepEvent] = []
    while data := sock.recv(65536):
        events += core.receive_data(data, 0.0)
        if out := core.data_to_send():
            sock.sendall(out)
    return events


def test_a_server_closing_inside_its_handshake_sends_its_end_before_the_fin() -> None:
    identity = ServerIdentity.with_early_data()
    cache = _ticket(identity)
    c_sock, s_sock = socket.socketpair()
    c_sock.settimeout(5)
    s_sock.settimeout(5)
    server = TlsCore(TepContext(role=Role.B, transcript=EXAMPLE_TRANSCRIPT,
                                options={"server_identity": identity, "half_rtt_data": True}))
    errors: list[BaseException] = []
    thread = threading.Thread(target=_serve, args=(TepDriver(s_sock, server, hold_replies=True),
                                                   errors))
    thread.start()
    client = TlsCore(TepContext(role=Role.A, transcript=EXAMPLE_TRANSCRIPT,
                                options={"session_cache": cache, "early_data": REQUEST}))
    client.start(0.0)
    c_sock.sendall(client.data_to_send())  # ClientHello with the request as 0-RTT data
    events = _read_to_eof(client, c_sock)
    thread.join(5)
    c_sock.close()
    s_sock.close()
    if errors:
        raise errors[0]
    assert b"".join(e.data for e in events if isinstance(e, DataReceived)) == RESPONSE
    assert client.resumed and server.early_data_accepted
    # The ticket and close_notify came before the FIN: a fresh ticket is in the cache
    # (single use: the one offered was taken out) and the end of stream was authenticated.
    assert client._wire.count_handshake(sent=False, msg_type=HS_NEW_SESSION_TICKET) == 1
    assert len(cache) == 1
    assert isinstance(events[-1], EndOfStream)
