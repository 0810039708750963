"""The stream layer over real loopback TCP, with the hook's verdict given directly.

``establish`` is what connect() and accept() run once the hook has answered, so these tests
cover TEP driving, the policies, integrity failures and the split check without namespaces.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from testbed.eno.control import Result
from testbed.stream import (
    EncryptionRequiredError,
    IntegrityFailure,
    NoSessionIdError,
    PeerRefusedTep,
    Policy,
    SplitNegotiationError,
    Stream,
    StreamConfig,
    StreamError,
    StreamInfo,
    TepFailure,
    connect,
    establish,
)

TRANSCRIPT = "45032045040120"
OPPORTUNISTIC = StreamConfig(teps=("eno-test",), handshake_timeout=3)
REQUIRED = StreamConfig(policy=Policy.REQUIRED, teps=("eno-test",), handshake_timeout=3)


def negotiated(role: str) -> Result:
    return Result(local=("127.0.0.1", 1), remote=("127.0.0.1", 2), active=role == "A",
                  state="enabled", outcome="negotiated", role=role, tep_id=0x20,
                  tep_byte=0x20, transcript=TRANSCRIPT)


def fell_back(reason: str, active: bool) -> Result:
    return Result(local=("127.0.0.1", 1), remote=("127.0.0.1", 2), active=active,
                  state="disabled", outcome="fallback", reason=reason)


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname(), timeout=5)
        peer, _ = server.accept()
        peer.settimeout(5)
    return client, peer


def both(make_a: Callable[[socket.socket], Any], make_b: Callable[[socket.socket], Any],
         socks: tuple[socket.socket, socket.socket] | None = None) -> tuple[Any, Any]:
    """Run the two ends concurrently; exceptions are returned, not raised."""
    sa, sb = socks or tcp_pair()

    def run(make: Callable[[socket.socket], Any], sock: socket.socket) -> Any:
        try:
            return make(sock)
        except Exception as exc:  # the test inspects it
            return exc

    with ThreadPoolExecutor(2) as pool:
        fa, fb = pool.submit(run, make_a, sa), pool.submit(run, make_b, sb)
        return fa.result(10), fb.result(10)


def est(result: Result, config: StreamConfig = OPPORTUNISTIC, check: Any = None):
    def make(sock: socket.socket) -> Stream:
        info = StreamInfo(policy=config.policy.value)
        return establish(sock, result, config, info, active=result.active, split_check=check)

    return make


def test_negotiated_test_tep_runs_its_handshake_and_carries_data():
    a, b = both(est(negotiated("A")), est(negotiated("B")))
    assert isinstance(a, Stream) and isinstance(b, Stream)
    assert a.session_id == b.session_id and a.session_id[0] == 0x20
    assert not a.encrypted, "the test TEP protects nothing and says so"
    assert a.info.eno == "negotiated" and a.info.tep_label == "TEST ONLY - not encryption"
    assert {"tcp_connected", "eno_result", "tep_handshake_done"} - set(a.info.phases) == {
        "tcp_connected"}  # establish() starts after TCP; connect() records that phase
    a.sendall(b"ping" * 10000)
    got = b""
    while len(got) < 40000:
        got += b.recv(65536)
    assert got == b"ping" * 10000
    a.close()
    assert b.recv(10) == b"", "the peer's END frame is EOF"
    b.close()


def relay_flipping(after: int) -> tuple[socket.socket, socket.socket]:
    """A -> relay -> B over TCP; the relay flips one bit of byte ``after`` of A's stream."""
    a_side, relay_a = tcp_pair()
    relay_b, b_side = tcp_pair()

    def pump(src: socket.socket, dst: socket.socket, flip: int | None) -> None:
        seen = 0
        while True:
            try:
                data = bytearray(src.recv(65536))
            except OSError:
                data = bytearray()
            if not data:
                dst.close()
                return
            if flip is not None and seen <= flip < seen + len(data):
                data[flip - seen] ^= 0x01
            seen += len(data)
            try:
                dst.sendall(data)
            except OSError:
                src.close()
                return

    threading.Thread(target=pump, args=(relay_a, relay_b, after), daemon=True).start()
    threading.Thread(target=pump, args=(relay_b, relay_a, None), daemon=True).start()
    return a_side, b_side


def test_tampered_data_aborts_the_connection_and_raises():
    # A's stream: HELLO (24) + CONFIRM (24); its first frame's payload starts at byte 51.
    a, b = both(est(negotiated("A")), est(negotiated("B")), relay_flipping(after=52))
    a.sendall(b"secret-ish")
    with pytest.raises(IntegrityFailure):
        b.recv(100)
    assert b.sock.fileno() == -1, "the receiver reset and closed the connection"


def test_required_policy_fails_closed_on_both_sides_without_sending_a_byte():
    sa, sb = tcp_pair()
    a, b = both(est(fell_back("no_eno_in_synack", True), REQUIRED),
                est(fell_back("no_eno_in_ack", False), REQUIRED), (sa, sb))
    assert isinstance(a, EncryptionRequiredError) and a.reason == "no_eno_in_synack"
    assert isinstance(b, EncryptionRequiredError) and b.reason == "no_eno_in_ack"
    assert a.local_port is not None


def test_required_policy_refuses_an_abort_from_the_hook():
    aborted = Result(local=("127.0.0.1", 1), remote=("127.0.0.1", 2), active=True,
                     state="aborted", outcome="aborted", reason="mandatory_encryption",
                     fallback="no_eno_in_synack")
    a, _ = both(est(aborted, REQUIRED), lambda s: s.recv(1))
    assert isinstance(a, EncryptionRequiredError) and a.reason == "no_eno_in_synack"


def test_opportunistic_fallback_is_plain_tcp_that_says_why():
    a, b = both(est(fell_back("no_eno_in_synack", True)), est(fell_back("no_eno_in_ack", False)))
    assert not a.encrypted and a.fallback_reason == "no_eno_in_synack"
    with pytest.raises(NoSessionIdError):
        _ = a.session_id
    a.sendall(b"plain")
    assert b.recv(10) == b"plain"


def test_split_negotiation_is_refused_not_misread():
    """A enabled, B fell back on an ACK stripped of ENO: B must not read A's TEP bytes as data;
    A then sees its TEP handshake refused before any byte, which lets connect() retry."""
    split = fell_back("no_eno_in_ack", False)

    def b_side(sock: socket.socket) -> Any:
        stream = est(split, check=lambda: True)(sock)
        return stream.recv(100)

    a, b = both(est(negotiated("A")), b_side)
    assert isinstance(b, SplitNegotiationError)
    assert isinstance(a, PeerRefusedTep)


def test_a_peer_that_closes_mid_stream_is_a_truncation_not_eof():
    a, b = both(est(negotiated("A")), est(negotiated("B")))
    a.sock.close()  # TCP FIN without the TEP's END frame
    with pytest.raises(TepFailure, match="TruncationError|before"):
        b.recv(10)


def test_policy_off_and_missing_hook():
    with socket.create_server(("127.0.0.1", 0)) as server:
        addr = server.getsockname()
        off = connect(addr, StreamConfig(policy=Policy.OFF), timeout=2)
        assert off.fallback_reason == "disabled_by_config" and off.info.eno is None
        off.close()
        nowhere = f"tcpinc-none-{uuid.uuid4().hex[:8]}"
        plain = connect(addr, StreamConfig(teps=("eno-test",), hook_name=nowhere), timeout=2)
        assert plain.fallback_reason == "hook_unavailable"
        plain.close()
        with pytest.raises(EncryptionRequiredError, match="hook_unavailable"):
            connect(addr, StreamConfig(policy=Policy.REQUIRED, teps=("eno-test",),
                                       hook_name=nowhere), timeout=2)


@pytest.mark.parametrize("name, tep_id", [("tcpcrypt-x25519", 0x23), ("tls", 0x30)])
def test_the_real_teps_are_one_registration_away(name, tep_id):
    """The stream drives any registered core: tcpcrypt and TLS run over real TCP here."""
    from testbed.teps import tcpcrypt, tls

    tcpcrypt.register_all()
    tls.register_all()
    config = StreamConfig(teps=(name,), handshake_timeout=5)

    def result(role: str) -> Result:
        return Result(local=("127.0.0.1", 1), remote=("127.0.0.1", 2), active=role == "A",
                      state="enabled", outcome="negotiated", role=role, tep_id=tep_id,
                      tep_byte=tep_id, transcript=f"4503{tep_id:02x}4504 01{tep_id:02x}"
                      .replace(" ", ""))

    a, b = both(est(result("A"), config), est(result("B"), config))
    assert isinstance(a, Stream) and isinstance(b, Stream), (a, b)
    assert a.encrypted and b.encrypted and a.tep == name
    assert a.session_id == b.session_id and a.session_id[0] == tep_id
    a.sendall(b"over " + name.encode())
    assert b.recv(100) == b"over " + name.encode()
    a.close()
    b.close()


def test_only_an_opportunistic_active_opener_drops_eno_from_syn_retransmissions():
    """RFC 8547 §4.6 exception: the stream asks the hook to drop ENO after 2 unanswered
    retransmissions (configurable); passive ends and the required policy never do."""
    assert OPPORTUNISTIC.settings(active=True, peer=None).syn_retries == 2
    assert OPPORTUNISTIC.settings(active=False, peer=None).syn_retries is None
    assert REQUIRED.settings(active=True, peer=None).syn_retries is None
    never = StreamConfig(teps=("eno-test",), syn_retries_with_eno=None)
    assert never.settings(active=True, peer=None).syn_retries is None
    sooner = StreamConfig(teps=("eno-test",), syn_retries_with_eno=0)
    assert sooner.settings(active=True, peer=None).eno_config().syn_retries_with_eno == 0


def test_a_reset_syn_with_eno_is_retried_without_it_only_when_opportunistic(monkeypatch):
    """A RST to the SYN with ENO (stand-in: _eno_connect refused): opportunistic reconnects
    without ENO and says why; required, or the retry switched off, raise; a port that
    refuses plain TCP too still raises."""
    import testbed.stream as stream_module

    def refused(*args: Any, **kwargs: Any) -> Stream:
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(stream_module, "_eno_connect", refused)
    with socket.create_server(("127.0.0.1", 0)) as server:
        addr = server.getsockname()
        plain = connect(addr, OPPORTUNISTIC, timeout=2)
        assert plain.fallback_reason == "syn_reset" and not plain.info.encrypted
        assert "reconnected without ENO" in plain.info.detail
        plain.close()
        for config in (REQUIRED, StreamConfig(teps=("eno-test",), retry_plain_after_reset=False)):
            with pytest.raises(ConnectionRefusedError):
                connect(addr, config, timeout=2)
    with pytest.raises(ConnectionRefusedError):
        connect(addr, OPPORTUNISTIC, timeout=2)  # closed now: refused without ENO as well


def test_a_negotiated_result_without_a_tep_resets_the_connection():
    """A datapath result that says negotiated but names no TEP or role contradicts itself: a
    StreamError and a RST, never a TEP core started on guesses."""
    broken = Result(local=("127.0.0.1", 1), remote=("127.0.0.1", 2), active=True,
                    state="enabled", outcome="negotiated", role="A", tep_id=None,
                    transcript=TRANSCRIPT)
    sa, sb = tcp_pair()
    with pytest.raises(StreamError, match="without a TEP or a role") as caught:
        establish(sa, broken, OPPORTUNISTIC, StreamInfo(policy="opportunistic"), active=True)
    assert caught.value.local_port is not None and sa.fileno() < 0
    with pytest.raises(ConnectionResetError):
        sb.recv(1)
    sb.close()


def test_the_hook_is_asked_about_a_connection_the_peer_already_reset(monkeypatch) -> None:
    """connect() returned, then the peer's RST (a required-policy passive end refusing on the
    first ACK) arrived before the result was asked for: getpeername() fails with ENOTCONN, and
    the connected-to address names the peer, so the caller still learns why (the required
    policy's EncryptionRequiredError, not an OSError)."""
    import testbed.stream as stream_module

    asked: list[tuple[Any, ...]] = []
    monkeypatch.setattr(stream_module, "query",
                        lambda config, local, peer: asked.append((local, peer)) or None)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not connected: getpeername() raises ENOTCONN
        with pytest.raises(OSError):
            sock.getpeername()
        stream_module._result(StreamConfig(), sock, ("10.0.0.2", 5000))
        assert asked == [(sock.getsockname(), ("10.0.0.2", 5000))]
