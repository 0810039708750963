"""Key logs (testbed/keylog.py): the tcpcrypt line format with the keys the cores really use,
the TLS callback, and the probe's refusal to write key logs without a capture."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import cli, keylog
from testbed.net import network
from testbed.teps.tcpcrypt.constants import TepId
from testbed.teps.tcpcrypt.keys import TrafficKey
from testbed.teps.tcpcrypt.loopback import connect
from testbed.teps.tcpcrypt.wire import Plaintext, open_frame, pull_frame, seal_frame


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        try:
            yield client, accepted
        finally:
            client.close()
            accepted.close()


def _lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


def test_tcpcrypt_lines_hold_the_keys_in_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             tcp_pair: tuple[socket.socket, socket.socket]
                                             ) -> None:
    path = tmp_path / "keys"
    monkeypatch.setenv(keylog.TCPCRYPT_ENV, str(path))
    pair = connect(TepId.X25519)
    pair.pump()
    client, _ = tcp_pair
    logged: set[tuple[str, int]] = set()
    keylog.note_tep_keys(pair.a, client, logged)
    keylog.note_tep_keys(pair.a, client, logged)  # nothing new: nothing written
    lines = _lines(path)
    assert len(lines) == 2 and path.stat().st_mode & 0o777 == 0o600
    local, peer = client.getsockname(), client.getpeername()
    send, receive = lines
    assert send[0] == keylog.TCPCRYPT_TAG and bytes.fromhex(send[1]) == pair.a.session_id
    assert send[2:6] == [local[0], str(local[1]), peer[0], str(peer[1])]
    assert receive[2:6] == [peer[0], str(peer[1]), local[0], str(local[1])]
    assert send[6] == receive[6] == "0" and send[7] == "0001"
    # The logged key opens what A seals, and the logged receive key what B seals (§3.6).
    sent_by_a = TrafficKey(1, bytes.fromhex(send[8] + send[9]))
    sent_by_b = TrafficKey(1, bytes.fromhex(receive[8] + receive[9]))
    frame_a = seal_frame(pair.a._send.key, 79, Plaintext(b"request"))  # noqa: SLF001
    frame_b = seal_frame(pair.b._send.key, 74, Plaintext(b"response"))  # noqa: SLF001
    assert open_frame(sent_by_a, 79, pull_frame(frame_a)).data == b"request"
    assert open_frame(sent_by_b, 74, pull_frame(frame_b)).data == b"response"
    pair.a.rekey()  # a new generation gets its own line (§3.8)
    keylog.note_tep_keys(pair.a, client, logged)
    assert [line[6] for line in _lines(path)] == ["0", "0", "1"]


def test_nothing_is_written_without_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    monkeypatch.delenv(keylog.TCPCRYPT_ENV, raising=False)
    pair = connect(TepId.X25519)
    pair.pump()
    keylog.note_tep_keys(pair.a, tcp_pair[0], set())
    assert not list(tmp_path.iterdir())


def test_tls_callback_appends_nss_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ssl"
    monkeypatch.setenv(keylog.TLS_ENV, str(path))
    keylog.tls_callback(None, b"CLIENT_TRAFFIC_SECRET_0 00ff 11ee")  # type: ignore[arg-type]
    keylog.tls_callback(None, b"SERVER_TRAFFIC_SECRET_0 00ff 22dd\n")  # type: ignore[arg-type]
    assert path.read_text() == ("CLIENT_TRAFFIC_SECRET_0 00ff 11ee\n"
                                "SERVER_TRAFFIC_SECRET_0 00ff 22dd\n")


def test_deferred_lines_wait_for_flush(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ssl.keys"
    monkeypatch.setenv(keylog.TLS_ENV, str(path))
    monkeypatch.setattr(keylog, "_pending", {})  # as after defer(), restored after the test
    keylog.tls_callback(None, b"CLIENT_RANDOM aa bb")  # type: ignore[arg-type]
    keylog.tls_callback(None, b"CLIENT_RANDOM cc dd\n")  # type: ignore[arg-type]
    assert not path.exists()
    keylog.flush()
    assert path.read_bytes() == b"CLIENT_RANDOM aa bb\nCLIENT_RANDOM cc dd\n"
    assert path.stat().st_mode & 0o777 == 0o600
    keylog.flush()  # nothing pending: nothing written twice
    assert path.read_bytes().count(b"\n") == 2


def test_environment_names_files_next_to_the_capture() -> None:
    env = keylog.environment("/run/x/pcaps/point-3")
    assert env == {keylog.TLS_ENV: "/run/x/pcaps/point-3.sslkeylog",
                   keylog.TCPCRYPT_ENV: "/run/x/pcaps/point-3.tcpcrypt-keylog"}


def test_probe_keylog_needs_a_capture(capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a network was started for invalid input")

    monkeypatch.setattr(network.Network, "__enter__", no_network)
    assert cli.main(["probe", "--proto", "tls", "--keylog"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--keylog" in err and "--pcap-dir" in err
