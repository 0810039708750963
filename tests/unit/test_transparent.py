"""Transparent proxy pieces without namespaces: rule builders, the query format, the relay."""

from __future__ import annotations

import socket
import threading

import pytest

from testbed.cli import main
from testbed.errors import ConfigError
from testbed.stream import Stream, StreamInfo
from testbed.transparent import control, rules
from testbed.transparent.host import ProxySpec
from testbed.transparent.relay import Pair, Relay

DIV = rules.Diversion(gid=7690, redirect_port=7690, tproxy_port=7691, listen_ports=(80, 443))


def test_ruleset_diverts_out_by_group_and_in_by_port() -> None:
    text = rules.nft_ruleset(DIV)
    assert "meta l4proto tcp meta skgid != 7690 redirect to :7690" in text
    assert "type filter hook prerouting priority -140" in text
    assert "tcp dport { 80, 443 } tproxy to :7691 accept" in text
    assert "reject" not in text
    required = rules.nft_ruleset(rules.Diversion(**{**DIV.__dict__, "required": True}))
    assert "tcp dport { 80, 443 } reject with tcp reset" in required
    client_only = rules.nft_ruleset(rules.Diversion(gid=1, redirect_port=2, tproxy_port=3))
    assert "divert_in" not in client_only and "redirect to :2" in client_only


def test_mangle_rules_skip_the_hook_for_loopback_and_diverted_apps() -> None:
    cmds = [" ".join(c) for c in rules.mangle_commands(DIV)]
    assert "iptables -w -t mangle -I OUTPUT 1 -p tcp -j TCPINC_TP_OUT" in cmds
    assert ("iptables -w -t mangle -A TCPINC_TP_OUT -p tcp -m owner --socket-exists ! "
            "--gid-owner 7690 -j ACCEPT") in cmds
    assert "iptables -w -t mangle -A TCPINC_TP_IN -i lo -j ACCEPT" in cmds


def test_removal_deletes_exactly_our_jumps_and_chains() -> None:
    listing = {
        "OUTPUT": "-P OUTPUT ACCEPT\n-A OUTPUT -p tcp -j TCPINC_TP_OUT\n"
                  "-A OUTPUT -p tcp -j TCPINC_ENO_OUT\n",
        "PREROUTING": "-P PREROUTING ACCEPT\n",
        "chains": "-N TCPINC_TP_OUT\n-N TCPINC_ENO_OUT\n",
    }
    cmds = [" ".join(c) for c in rules.remove_commands(listing)]
    assert cmds == ["iptables -w -t mangle -D OUTPUT -p tcp -j TCPINC_TP_OUT",
                    "iptables -w -t mangle -F TCPINC_TP_OUT",
                    "iptables -w -t mangle -X TCPINC_TP_OUT"]


@pytest.mark.parametrize("bad", ["10.0.0.1", "10.0.0.1:0", "10.0.0.1:70000", "host:80", ":1"])
def test_bad_addresses_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        control.parse_addr(bad)


def test_query_format() -> None:
    assert control.parse_addr("10.0.1.1:4000") == ("10.0.1.1", 4000)
    line = b'{"local": ["10.0.1.1", 4000], "remote": ["10.0.1.2", 80]}'
    assert control.parse_request(line) == "10.0.1.1:4000>10.0.1.2:80"
    for bad in (b"[]", b'{"local": ["10.0.1.1"]}', b"nonsense"):
        with pytest.raises(ValueError):
            control.parse_request(bad)


def test_spec_refuses_bad_values() -> None:
    with pytest.raises(ConfigError):
        ProxySpec(policy="sometimes")
    with pytest.raises(ConfigError):
        ProxySpec(listen_ports=(7690,))
    with pytest.raises(ConfigError):
        ProxySpec(listen_ports=(0,))


def test_sid_cli_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sid", "10.0.0.1", "10.0.0.2:80"]) == 2
    assert "bad address" in capsys.readouterr().err
    # No proxy in this namespace (a name nobody uses).
    assert main(["sid", "10.0.0.1:1", "10.0.0.2:80", "--name", "tcpinc-test-none"]) == 2
    assert "no transparent proxy" in capsys.readouterr().err


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of one loopback TCP connection (RSTs exist, unlike socketpairs)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    return client, accepted


class RelayHarness:
    """One plain pair over socketpairs: (app peer, net peer) are the outside ends."""

    def __init__(self) -> None:
        self.app_peer, app = tcp_pair()
        self.net_peer, net = tcp_pair()
        stream = Stream(net, StreamInfo(policy="off", fallback_reason="disabled_by_config"))
        self.ended: list[Pair] = []
        self.relay = Relay(self.ended.append)
        self.relay.add(Pair.create(app, stream, {}))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.relay.pairs:
            for key, mask in self.relay.selector.select(timeout=0.1):
                self.relay.handle(key, mask)

    def join(self) -> Pair:
        self.thread.join(5)
        assert not self.thread.is_alive()
        return self.ended[0]


def read_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def test_relay_keeps_half_close_and_large_transfers() -> None:
    h = RelayHarness()
    payload = bytes(range(256)) * 20000  # 5 MB: back-pressure engages
    sender = threading.Thread(target=lambda: (h.app_peer.sendall(payload),
                                              h.app_peer.shutdown(socket.SHUT_WR)))
    sender.start()
    assert read_all(h.net_peer) == payload  # EOF arrives after every byte
    h.net_peer.sendall(b"reply after half-close")
    h.net_peer.shutdown(socket.SHUT_WR)
    assert read_all(h.app_peer) == b"reply after half-close"
    sender.join()
    pair = h.join()
    assert pair.ended == "closed"
    assert pair.record["app_bytes_in"] == pair.record["net_bytes_out"] == len(payload)


def test_relay_turns_a_reset_into_a_reset() -> None:
    h = RelayHarness()
    h.app_peer.sendall(b"x")
    assert h.net_peer.recv(1) == b"x"
    h.net_peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    h.net_peer.close()
    pair = h.join()
    assert pair.ended is not None and pair.ended.startswith("reset")
    h.app_peer.settimeout(2)
    with pytest.raises(ConnectionResetError):
        h.app_peer.recv(1)


def test_probe_transparent_refuses_non_eno_arms(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "--transparent", "--proto", "tls-noeno"]) == 2
    assert "--transparent runs the proxies with an ENO arm" in capsys.readouterr().err
