"""TepDriver ``hold_replies``: a TLS server's tickets leave with its response, in one write.

A real TLS server core on one end of a socket pair; the client is a TLS core this test drives
by hand on the other end, so every write of the server is seen exactly.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from testbed.tepio import TepDriver
from testbed.teps.base import DataReceived, EndOfStream, Role, TepContext
from testbed.teps.tls.constants import HS_NEW_SESSION_TICKET
from testbed.teps.tls.core import TlsCore
from testbed.teps.tls.pair import EXAMPLE_TRANSCRIPT

REQUEST = b"GET / request"
RESPONSE = b"the response bytes"


class RecordingSocket:
    """A socket whose ``sendall`` calls are recorded (what the server wrote, write by write)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.writes: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def _client_until(core: TlsCore, sock: socket.socket, done: Any,
                  got: list[bytes] | None = None) -> list[bytes]:
    """Feed what arrives on ``sock`` to the client core until ``done()``; its app data is
    added to ``got``."""
    got = [] if got is None else got
    while not done():
        data = sock.recv(65536)
        assert data, "server closed early"
        for event in core.receive_data(data, 0.0):
            if isinstance(event, DataReceived):
                got.append(event.data)
        out = core.data_to_send()
        if out:
            sock.sendall(out)
    return got


def _server_pair(hold: bool) -> tuple[socket.socket, socket.socket, RecordingSocket, TepDriver]:
    """A socket pair, the server end recorded, and a TLS server core's driver on it."""
    c_sock, s_sock = socket.socketpair()
    c_sock.settimeout(5)
    s_sock.settimeout(5)
    server = RecordingSocket(s_sock)
    core = TlsCore(TepContext(role=Role.B, transcript=EXAMPLE_TRANSCRIPT, options={}))
    return c_sock, s_sock, server, TepDriver(server, core, hold_replies=hold)  # type: ignore[arg-type]


def _run(hold: bool, second_recv: bool) -> tuple[RecordingSocket, TlsCore, list[bytes]]:
    c_sock, s_sock, server, driver = _server_pair(hold)
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            driver.run_handshake(5)
            assert driver.recv(len(REQUEST)) == REQUEST
            if second_recv:  # wait for more before answering: the held bytes go first
                assert driver.recv(100) == b"more"
            driver.send(RESPONSE)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    client = TlsCore(TepContext(role=Role.A, transcript=EXAMPLE_TRANSCRIPT,
                                options={"first_data": REQUEST}))
    client.start(0.0)
    c_sock.sendall(client.data_to_send())  # ClientHello
    got = _client_until(client, c_sock, lambda: client.handshake_complete)
    tickets = client._wire.count_handshake  # the client's view of what arrived

    def tickets_in() -> bool:
        return tickets(sent=False, msg_type=HS_NEW_SESSION_TICKET) == 2

    if second_recv:
        _client_until(client, c_sock, tickets_in, got)
        client.send_data(b"more")
        c_sock.sendall(client.data_to_send())
    _client_until(client, c_sock, lambda: RESPONSE in b"".join(got), got)
    thread.join(5)
    c_sock.close()
    s_sock.close()
    if errors:
        raise errors[0]
    return server, client, got


def test_held_tickets_leave_with_the_response_in_one_write() -> None:
    server, client, got = _run(hold=True, second_recv=False)
    # The server's flight, then one write: both NewSessionTickets and the response.
    assert len(server.writes) == 2
    assert client._wire.count_handshake(sent=False, msg_type=HS_NEW_SESSION_TICKET) == 2
    assert b"".join(got) == RESPONSE


def test_without_holding_the_tickets_are_a_write_of_their_own() -> None:
    server, _client, got = _run(hold=False, second_recv=False)
    assert len(server.writes) == 3  # flight, tickets, response
    assert b"".join(got) == RESPONSE


def test_held_bytes_leave_before_the_driver_waits_for_the_peer() -> None:
    # The client only sends "more" once both tickets arrived: had the server kept them
    # while it waited in recv, neither end would move (the test would time out).
    server, client, got = _run(hold=True, second_recv=True)
    assert len(server.writes) == 3  # flight, tickets (before the wait), response
    assert b"".join(got) == RESPONSE


@pytest.mark.parametrize("hold", [True, False])
def test_take_buffered_sends_what_was_held(hold: bool) -> None:
    c_sock, s_sock, server, driver = _server_pair(hold)
    client = TlsCore(TepContext(role=Role.A, transcript=EXAMPLE_TRANSCRIPT,
                                options={"first_data": REQUEST}))
    client.start(0.0)
    c_sock.sendall(client.data_to_send())
    thread = threading.Thread(target=driver.run_handshake, args=(5,))
    thread.start()
    _client_until(client, c_sock, lambda: client.handshake_complete)
    thread.join(5)
    assert len(server.writes) == (1 if hold else 2)
    assert driver.take_buffered() == REQUEST
    assert len(server.writes) == 2  # an event loop taking the core over gets nothing held
    c_sock.close()
    s_sock.close()


def test_tickets_of_a_read_that_ended_the_stream_leave_with_the_close() -> None:
    # The client's Finished and its close_notify arrive in one read: the server's tickets
    # wait for its own close_notify and leave in one write with it (then the FIN), instead of
    # a write of their own before it.
    c_sock, s_sock, server, driver = _server_pair(True)
    client = TlsCore(TepContext(role=Role.A, transcript=EXAMPLE_TRANSCRIPT, options={}))
    client.start(0.0)
    c_sock.sendall(client.data_to_send())  # ClientHello
    thread = threading.Thread(target=lambda: (driver.run_handshake(5), driver.recv(1),
                                              driver.close_write()))
    thread.start()
    while not client.handshake_complete:
        client.receive_data(c_sock.recv(65536), 0.0)
    client.close()
    c_sock.sendall(client.data_to_send())  # Finished and close_notify, one write
    c_sock.shutdown(socket.SHUT_WR)
    thread.join(5)
    events = []
    while data := c_sock.recv(65536):
        events += client.receive_data(data, 0.0)
    c_sock.close()
    s_sock.close()
    assert len(server.writes) == 2  # the server's flight; tickets and close_notify together
    assert client._wire.count_handshake(sent=False, msg_type=HS_NEW_SESSION_TICKET) == 2
    assert any(isinstance(e, EndOfStream) for e in events)
