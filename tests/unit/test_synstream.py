"""SYN-data streams without a network: configuration refusals, the labels of the arms, the
datapath rule, and the passive end's confirmation of its tentative start (testbed/synstream.py)."""

from __future__ import annotations

import socket

import pytest

from testbed import synstream
from testbed.apps.proto_syn import ARMS, HOST_SYSCTLS, SYN_ARMS
from testbed.apps.transport import get_transport
from testbed.errors import ConfigError
from testbed.stream import Policy, StreamConfig, StreamError
from testbed.teps.base import DataReceived, HandshakeComplete, TepEvent
from testbed.workload import Workload, eno_datapath, needs_hook

TCPCRYPT = "tcpcrypt-x25519"


@pytest.mark.parametrize("config", [
    StreamConfig(teps=(TCPCRYPT, "tcpcrypt-x448"), syn_data=(TCPCRYPT,)),  # two TEPs offered
    StreamConfig(teps=(TCPCRYPT,)),  # SYN data not switched on through the API (§4.7)
    StreamConfig(teps=(TCPCRYPT,), syn_data=(TCPCRYPT,), policy=Policy.OFF),
])
def test_a_syn_data_stream_offers_exactly_its_syn_tep_under_eno(config: StreamConfig) -> None:
    with pytest.raises(StreamError):
        synstream.syn_tep(config)


def test_the_settings_switch_syn_data_on_for_the_named_tep_only() -> None:
    config = StreamConfig(teps=(TCPCRYPT,), syn_data=(TCPCRYPT,))
    assert synstream.syn_tep(config).tep_id == 0x23
    assert config.settings(active=True, peer=None).syn_data == (0x23,)
    assert StreamConfig(teps=(TCPCRYPT,)).settings(active=True, peer=None).syn_data == ()


def test_every_arm_is_labelled_beyond_its_specification() -> None:
    labels = {arm.name: arm.variant_label for arm in ARMS}
    assert "beyond RFC 8548" in labels["tcpcrypt-syn"]
    assert "beyond RFC 8548" in labels["tcpcrypt-resume-syn"]
    for name in ("tls-syn", "tls-0rtt-syn", "tls-0rtt-syn-noantireplay"):
        assert "beyond the use-tls draft" in labels[name]
    for name in SYN_ARMS:
        transport = get_transport(name)
        assert transport.uses_eno and transport.host_sysctls == HOST_SYSCTLS
        assert transport.config(server=True).syn_data == transport.config(server=True).teps
    # Linux's no-cookie TFO modes on top of the default client and server bits (0x3).
    assert HOST_SYSCTLS == {"client": {"net.ipv4.tcp_fastopen": "7"},
                            "server": {"net.ipv4.tcp_fastopen": "515"}}


def test_syn_arms_run_on_the_nfqueue_datapath_and_refuse_bpf() -> None:
    assert needs_hook("tls-syn") and not needs_hook("tls")
    assert eno_datapath(Workload(proto="tcpcrypt-syn", eno_datapath="nfqueue")) == "nfqueue"
    with pytest.raises(ConfigError):  # names the hook, or bpf missing here
        eno_datapath(Workload(proto="tcpcrypt-syn", eno_datapath="bpf"))


class _OneShotCore:
    """A core whose handshake completes on the first bytes it receives."""

    def __init__(self) -> None:
        self.handshake_complete = False
        self.session_id: bytes | None = None

    def start(self, now: float) -> list[TepEvent]:
        return []

    def receive_data(self, data: bytes, now: float) -> list[TepEvent]:
        self.handshake_complete, self.session_id = True, b"\x20" + bytes(32)
        return [HandshakeComplete(self.session_id), DataReceived(data)]

    def data_to_send(self) -> bytes:
        return b""


def _driver(confirm: object) -> tuple[synstream.ConfirmingDriver, socket.socket]:
    left, right = socket.socketpair()
    right.sendall(b"first flight")
    return synstream.ConfirmingDriver(left, _OneShotCore(), confirm), right  # type: ignore[arg-type]


def test_the_passive_end_confirms_once_when_its_handshake_completes() -> None:
    calls: list[int] = []
    driver, peer = _driver(lambda: calls.append(1))
    try:
        assert driver.run_handshake(1.0).session_id.startswith(b"\x20")
        assert driver.recv(100) == b"first flight" and calls == [1]
    finally:
        driver.sock.close()
        peer.close()


def test_an_unconfirmed_tentative_start_fails_the_handshake() -> None:
    def refuse() -> None:
        raise synstream.SynDataUnconfirmed("ENO did not confirm the SYN TEP")

    driver, peer = _driver(refuse)
    try:
        with pytest.raises(synstream.SynDataUnconfirmed):
            driver.run_handshake(1.0)
    finally:
        driver.sock.close()
        peer.close()


def test_deliver_first_lets_the_application_read_before_the_confirmation() -> None:
    """A resumed session's SYN data (or 0-RTT data) reaches the application and its answer
    leaves at once; the confirmation runs before anything more is read."""
    calls: list[str] = []
    left, right = socket.socketpair()
    right.sendall(b"request on the SYN")
    driver = synstream.ConfirmingDriver(left, _OneShotCore(),  # type: ignore[arg-type]
                                        lambda: calls.append("confirmed"), deliver_first=True)
    try:
        driver.start()
        assert driver.recv(100) == b"request on the SYN" and calls == []
        right.sendall(b"more")
        assert driver.recv(100) == b"more" and calls == ["confirmed"]
    finally:
        left.close()
        right.close()


@pytest.mark.parametrize(("result", "reason"), [
    (None, "no_eno_result"),
    ({"outcome": "aborted", "reason": "syn_data_unconfirmed", "fallback": "no_eno_in_synack"},
     "syn_data_unconfirmed"),
    ({"outcome": "aborted", "reason": "syn_data_misinterpreted"}, "syn_data_misinterpreted"),
    ({"outcome": "fallback", "reason": "no_common_tep"}, "no_common_tep"),
])
def test_when_eno_does_not_take_the_syn_data_the_connection_is_reset_and_says_why(
        result: dict[str, str] | None, reason: str) -> None:
    from testbed.eno.control import Result

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        got = None if result is None else Result(local=("10.0.1.1", 1), remote=("10.0.1.2", 2),
                                                 active=True, state="disabled", **result)
        with pytest.raises(synstream.SynDataRefused) as caught:
            synstream._check_outcome(sock, got)
        assert caught.value.reason == reason and sock.fileno() == -1  # reset and closed
    finally:
        sock.close()


def test_a_resumption_on_the_syn_presumes_the_answer_its_offer_expects() -> None:
    from testbed.apps.proto_syn import SYN_RESUME_PROVIDER
    from testbed.eno.control import Settings
    from testbed.teps import base

    spec = base.get(TCPCRYPT)
    config = StreamConfig(teps=(TCPCRYPT,), syn_data=(TCPCRYPT,),
                          providers={TCPCRYPT: SYN_RESUME_PROVIDER})
    settings = config.settings(active=True, peer=("10.0.1.2", 5000))
    assert synstream._presumed_answer(config, spec, settings) is None  # nothing cached: fresh
    half = bytes(range(9))
    offered = StreamConfig(teps=(TCPCRYPT,), syn_data=(TCPCRYPT,),
                           providers={TCPCRYPT: SYN_RESUME_PROVIDER})
    with_offer = Settings(teps=((0x23, half + bytes(8)),), expect=((0x23, half),),
                          syn_data=(0x23,))
    assert synstream._presumed_answer(offered, spec, with_offer) == half  # no nonce_b
    fresh = StreamConfig(teps=(TCPCRYPT,), syn_data=(TCPCRYPT,))
    assert synstream._presumed_answer(fresh, spec, with_offer) is None  # no presumption
