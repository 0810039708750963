"""The TLS protocol arms (testbed/apps/proto_tls.py) over loopback TCP, without namespaces.

Non-ENO arms run as they do in the hosts. ENO arms run through ``testbed.stream.establish``
with the hook's verdict given directly (as tests/unit/test_stream.py does), so the providers,
0-RTT, the server's early handoff (testbed/tepio.py ``run_until_data``) and the late session ID
are covered here; the kernel and the hook are covered by tests/emulation/test_tls.py.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from experiments.theory import THEORY_RTTS
from testbed.apps import proto_tls
from testbed.apps.transport import TRANSPORTS, get_transport
from testbed.cli import arm_name
from testbed.eno.control import Result
from testbed.stream import (
    IntegrityFailure,
    NoSessionIdError,
    Stream,
    StreamError,
    StreamInfo,
    TepFailure,
    establish,
)
from testbed.teps.tls.options import TlsOptions

ENO_ARMS = ("tls", "tls-resume", "tls-0rtt")
NOENO_ARMS = tuple(f"tls-noeno{v}{t}" for t in ("", "-tfo") for v in ("", "-resume", "-0rtt"))
REQUEST = b"GET /resource\r\n"
RESPONSE = b"response bytes " * 20


@pytest.fixture(autouse=True)
def fresh_tickets() -> Iterator[None]:
    """Each test starts without tickets (the cache is per process)."""
    proto_tls.client_cache().clear()
    yield
    proto_tls.client_cache().clear()


# --- the arms ---------------------------------------------------------------------------------


def test_every_tls_arm_the_cli_can_name_is_registered_with_a_theory_row() -> None:
    names = set()
    for proto, tfos in (("tls", (False,)), ("tls-noeno", (False, True))):
        for resume, early in ((False, False), (True, False), (False, True)):
            for tfo in tfos:
                names.add(arm_name(proto, resume=resume, early_data=early, tfo=tfo))
    assert names == set(ENO_ARMS + NOENO_ARMS)
    for name in names:
        assert name in TRANSPORTS and name in THEORY_RTTS, name


def test_labels_say_what_is_non_standard_and_what_is_beyond_the_draft() -> None:
    for name in ENO_ARMS:
        transport = get_transport(name, "required")
        assert transport.uses_eno and transport.policy == "required"
        assert "TEP 0x30" in transport.description and "non-standard" in transport.description
        beyond = "beyond draft-ietf-tcpinc-use-tls" in transport.description
        assert beyond == (name != "tls"), name
    for name in NOENO_ARMS:
        transport = get_transport(name)
        assert not transport.uses_eno and transport.session_ids
        assert transport.description.startswith("ordinary TLS 1.3 over TCP without ENO")
        assert transport.arm.tfo == name.endswith("-tfo")


def test_arm_options_are_options_the_engine_accepts_for_its_role() -> None:
    for name in ENO_ARMS + NOENO_ARMS:
        arm = get_transport(name).arm
        client = TlsOptions.from_mapping(arm.client_options(("10.0.0.2", 5000), REQUEST))
        server = TlsOptions.from_mapping(arm.server_options())
        assert client.conflicts_with_role(True) == [] and server.conflicts_with_role(False) == []
        assert client.mode == server.mode == ("eno" if arm.eno else "plain")
        assert (client.session_cache is not None) == arm.resumes
        assert client.early_data == (REQUEST if arm.early_data else b"")
        assert server.half_rtt_data == arm.early_data
        identity = server.server_identity
        assert identity is not None and identity.resumption == arm.resumes
        assert (identity.max_early_data > 0) == arm.early_data


@pytest.mark.skipif("OPENSSL_CONF" in os.environ, reason="this process may clear compat mode")
def test_compat_off_arms_exist_only_where_openssl_can_switch_compat_off() -> None:
    assert not proto_tls.compat_off_available()
    assert "tls-nocompat" not in TRANSPORTS and "tls-noeno-nocompat" not in TRANSPORTS


# --- non-ENO arms over loopback ---------------------------------------------------------------


class Server:
    """One TLS arm's server on loopback: per connection, what it saw at setup and at the end."""

    def __init__(self, name: str) -> None:
        self.transport = get_transport(name)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.transport.listen(self.sock)
        self.addr: tuple[str, int] = self.sock.getsockname()
        self.seen: list[dict[str, Any]] = []
        self.finished = threading.Semaphore(0)  # released once per connection served
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                sock, addr = self.sock.accept()
            except OSError:
                return  # closed by the test
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            entry: dict[str, Any] = {}
            self.seen.append(entry)
            try:
                self._one(self.transport.accept(sock, addr), entry)
            except (OSError, StreamError) as exc:
                entry["error"] = exc
            finally:
                self.finished.release()

    def _one(self, conn: Any, entry: dict[str, Any]) -> None:
        entry["setup_session_id"] = conn.info.session_id
        entry["request"] = conn.recv(len(REQUEST))
        conn.sendall(RESPONSE)
        entry["after"] = conn.recv(100)  # the client's close_notify: b""
        entry["session_id"] = conn.info.session_id
        conn.close()

    def close(self) -> None:
        self.sock.close()


def client_round(name: str, addr: tuple[str, int]) -> dict[str, Any]:
    transport = get_transport(name)
    conn, sent = transport.connect(addr, 5.0, REQUEST)
    if sent < len(REQUEST):
        conn.sendall(REQUEST[sent:])
    got = b""
    while len(got) < len(RESPONSE):
        chunk = conn.recv(65536)
        assert chunk, "response cut short"
        got += chunk
    conn.close()
    return {"sent": sent, "response": got, "info": conn.info}


@pytest.mark.parametrize("name", ["tls-noeno", "tls-noeno-resume", "tls-noeno-0rtt"])
def test_noeno_arm_full_then_resumed_with_equal_session_ids(name: str) -> None:
    server = Server(name)
    try:
        rounds = [client_round(name, server.addr) for _ in range(3)]
        for _ in rounds:  # the server thread has recorded its end of each connection
            assert server.finished.acquire(timeout=10)
    finally:
        server.close()
    arm = get_transport(name).arm
    for index, (done, seen) in enumerate(zip(rounds, server.seen, strict=True)):
        info = done["info"]
        assert done["response"] == RESPONSE and seen["request"] == REQUEST
        assert seen["after"] == b"" and "error" not in seen
        assert info.outcome == "encrypted" and info.tep == "tls" and info.eno is None
        assert info.session_id is not None and info.session_id == seen["session_id"]
        assert info.session_id.startswith("30")
        extras = info.extras
        assert extras["variant_label"] == arm.variant_label
        assert extras["resumed"] == (arm.resumes and index > 0)
        zero_rtt = arm.early_data and index > 0
        assert extras["early_data_accepted"] == (True if zero_rtt else None)
        # Every arm hands the request to TLS: as 0-RTT data, or behind the client's Finished.
        assert done["sent"] == len(REQUEST)
        # The 0-RTT server answered before the client's Finished: no session ID at setup.
        assert (seen["setup_session_id"] is None) == zero_rtt
        assert "request_sent" in info.phases
        if not zero_rtt:
            # Behind the Finished: after the server's first bytes were read (the lower bound
            # the capture analysis finds the request segment from), before the handshake ended.
            assert info.phases["tcp_connected"] < info.phases["request_from"]
            assert info.phases["request_from"] <= info.phases["request_sent"]
    assert len({r["info"].session_id for r in rounds}) == 3


def test_noeno_client_facing_a_non_tls_server_fails_and_resets() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def garbage() -> None:
            peer, _ = listener.accept()
            peer.recv(4096)
            peer.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" * 4)
            time.sleep(0.5)
            peer.close()

        thread = threading.Thread(target=garbage, daemon=True)
        thread.start()
        with pytest.raises(TepFailure, match="tls \\(no ENO\\) handshake failed"):
            get_transport("tls-noeno").connect(listener.getsockname(), 5.0, REQUEST)
        thread.join(5)


class FlippingRelay:
    """client -> relay -> server; flips the last byte (the AEAD tag, RFC 8446 §5.2) of the
    client's first application_data record of ``length`` bytes, and passes a reset on: a
    reset from the server is answered with a reset to the client (SO_LINGER 0)."""

    def __init__(self, upstream: tuple[str, int], length: int) -> None:
        self.upstream = upstream
        self.length = length
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.addr: tuple[str, int] = self.sock.getsockname()
        self.flipped = threading.Event()
        self.reset_seen = threading.Event()
        self._pending = b""  # client bytes not yet split into whole TLS records
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        down, _ = self.sock.accept()
        up = socket.create_connection(self.upstream, timeout=5)
        threading.Thread(target=self._pump, args=(down, up, True), daemon=True).start()
        self._pump(up, down, False)

    def _records(self, data: bytes) -> bytes:
        """Forward whole records only, so the one to damage is found by its header
        (type 23 = application_data, RFC 8446 §5.1)."""
        self._pending += data
        out = bytearray()
        while len(self._pending) >= 5:
            size = 5 + int.from_bytes(self._pending[3:5], "big")
            if len(self._pending) < size:
                break
            record = bytearray(self._pending[:size])
            self._pending = self._pending[size:]
            if record[0] == 23 and size - 5 == self.length and not self.flipped.is_set():
                record[-1] ^= 0x01
                self.flipped.set()
            out += record
        return bytes(out)

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(self._records(data) if from_client else data)
            dst.shutdown(socket.SHUT_WR)
        except ConnectionResetError:
            self.reset_seen.set()
            dst.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # Wake the other pump's recv on dst (a socket another thread is reading is only
            # released, and the RST sent, when that read returns), then let go of both.
            dst.shutdown(socket.SHUT_RD)
            dst.close()  # with linger 0: RST, as the server sent
            src.close()
        except OSError:
            for s in (src, dst):
                s.close()


def test_noeno_tampered_record_tears_down_and_delivers_nothing() -> None:
    server = Server("tls-noeno")
    # The request record: the request, its content type byte and a 16-byte tag (§5.2).
    relay = FlippingRelay(server.addr, length=len(REQUEST) + 1 + 16)
    try:
        # The request leaves with the client's Finished (connect says how much it took); a
        # second copy sent after it could meet the server's reset on this socket instead.
        conn, taken = get_transport("tls-noeno").connect(relay.addr, 5.0, REQUEST)
        conn.sendall(REQUEST[taken:])
        with pytest.raises(ConnectionResetError):  # the server reset the connection
            while conn.recv(65536):
                pass
        conn.close()
        assert server.finished.acquire(timeout=10)
    finally:
        server.close()
        relay.sock.close()
    assert relay.flipped.is_set() and relay.reset_seen.is_set()
    (seen,) = server.seen
    assert isinstance(seen.get("error"), IntegrityFailure) and "bad_record_mac" in str(
        seen["error"])
    assert "request" not in seen, "nothing reached the server application"


# --- ENO arms through the stream layer (the hook's verdict given directly) ---------------------


def verdict(role: str) -> Result:
    return Result(local=("127.0.0.1", 1), remote=("127.0.0.1", 2), active=role == "A",
                  state="enabled", outcome="negotiated", role=role, tep_id=0x30,
                  tep_byte=0x30, transcript="450330450430")


def eno_pair(name: str) -> tuple[Stream, Stream]:
    transport = get_transport(name)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a_sock = socket.create_connection(listener.getsockname(), timeout=5)
        b_sock, _ = listener.accept()
    b_sock.settimeout(5)

    def side(role: str, sock: socket.socket) -> Stream:
        server = role == "B"
        config = transport.config(server=server, first=b"" if server else REQUEST, timeout=5)
        info = StreamInfo(policy=config.policy.value)
        return establish(sock, verdict(role), config, info, active=not server)

    with ThreadPoolExecutor(2) as pool:
        fa, fb = pool.submit(side, "A", a_sock), pool.submit(side, "B", b_sock)
        return fa.result(10), fb.result(10)


def eno_round(name: str) -> tuple[Stream, Stream, bytes]:
    """One request/response; the client's request went to TLS in the config (``first``): as
    early data when it could, else behind the client's Finished."""
    a, b = eno_pair(name)
    request = b.recv(len(REQUEST))
    b.sendall(RESPONSE)
    got = b""
    while len(got) < len(RESPONSE):
        got += a.recv(65536)
    return a, b, request


def test_eno_0rtt_server_answers_before_the_handshake_ends_then_learns_the_session_id() -> None:
    first_a, first_b, request = eno_round("tls-0rtt")
    assert request == REQUEST and first_a.info.resumed is False
    proto_tls.TlsConn(first_a, get_transport("tls-0rtt").arm, client=True).close()
    assert first_b.recv(10) == b"" and first_b.session_id == first_a.session_id
    first_b.close()

    a, b, request = eno_round("tls-0rtt")
    assert request == REQUEST, "the 0-RTT request reached the server application"
    assert a.info.resumed and a.info.early_data_accepted is True
    with pytest.raises(NoSessionIdError):
        b.session_id  # noqa: B018 -- the client's Finished has not been read yet
    conn = proto_tls.TlsConn(a, get_transport("tls-0rtt").arm, client=True)
    closer = threading.Thread(target=conn.close)  # waits for the server's close_notify
    closer.start()
    assert b.recv(10) == b"", "the client's close_notify ends the stream"
    assert b.session_id == a.session_id and b.session_id[0] == 0x30
    assert b.info.resumed is True and "tep_handshake_done" in b.info.phases
    b.close()
    closer.join(5)
    assert not closer.is_alive()
    assert proto_tls.client_cache().count("127.0.0.1:2") >= 1, "a fresh ticket arrived"


def test_eno_resume_arm_resumes_without_early_data() -> None:
    for index in range(2):
        a, b, request = eno_round("tls-resume")
        assert request == REQUEST
        assert a.info.resumed is (index > 0) and a.info.early_data_accepted is None
        assert a.session_id == b.session_id and a.info.tep_label == "non-standard TEP id"
        a.close()
        assert b.recv(10) == b""
        b.close()


def test_connect_overlapped_runs_the_work_during_the_handshake_and_reports_refusal() -> None:
    import socket as _socket

    from testbed.apps.proto_tls import connect_overlapped

    calls: list[int] = []
    with _socket.create_server(("127.0.0.1", 0)) as listener:
        sock = _socket.socket()
        try:
            connect_overlapped(sock, listener.getsockname(), 5.0, lambda: calls.append(1))
            assert calls == [1] and sock.gettimeout() == 5.0
            assert sock.getpeername() == listener.getsockname()
        finally:
            sock.close()
        port = listener.getsockname()[1]
    sock = _socket.socket()
    try:
        with pytest.raises(ConnectionRefusedError, match=f"connect to 127.0.0.1:{port}"):
            connect_overlapped(sock, ("127.0.0.1", port), 5.0, lambda: calls.append(2))
        assert calls == [1, 2]  # the work ran while the SYN was out, refused or not
    finally:
        sock.close()
