"""The hook's control channel (messages, server dispatch, root-only access) and rule builders."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from testbed.eno.control import (
    ControlError,
    HookClient,
    HookUnavailableError,
    Result,
    Settings,
)
from testbed.eno.controlserver import ControlServer
from testbed.eno.engine import HookEngine
from testbed.eno.rules import HookSpec, chain_rules, install_commands, remove_commands
from tests.eno_segments import segment

A, B = ("10.0.1.1", 40000), ("10.0.2.1", 5000)


def test_settings_round_trip_and_strictness():
    settings = Settings(teps=((0x21, bytes(9)), (0x20, None)), passive_role=True,
                        application_aware=True, mandatory=True)
    assert Settings.from_json(settings.to_json()) == settings
    config = settings.eno_config()
    assert config.mandatory_encryption and config.passive_role and config.a_bit
    for bad in ({"teps": [[0x1F, None]]}, {"teps": [[0x20, None], [0x20, None]]},
                {"teps": [[0x20, "zz"]]}, {"teps": [[0x20, "00" * 38]]}, {"colour": 1},
                {"b": "yes"}, {"teps": [0x20]}, []):
        with pytest.raises(ControlError):
            Settings.from_json(bad)


def test_settings_syn_retries():
    settings = Settings(teps=((0x20, None),), syn_retries=2)
    assert settings.to_json()["syn_retries"] == 2
    assert Settings.from_json(settings.to_json()) == settings
    assert settings.eno_config().syn_retries_with_eno == 2
    assert "syn_retries" not in Settings(teps=((0x20, None),)).to_json()
    assert Settings(teps=((0x20, None),)).eno_config().syn_retries_with_eno is None
    for bad in ({"syn_retries": -1}, {"syn_retries": 256}, {"syn_retries": "2"},
                {"syn_retries": True}, {"syn_retries": 1.5},
                {"syn_retries": 1, "mandatory": True}):
        with pytest.raises(ControlError):
            Settings.from_json(bad)


def test_settings_syn_data_is_off_unless_asked_for():
    """RFC 8547 §4.7: SYN data only for TEPs that define it, and off by default."""
    plain = Settings(teps=((0x21, None), (0x20, None)))
    assert "syn_data" not in plain.to_json()
    config = plain.eno_config()
    assert config.syn_data_teps == frozenset() and not config.allow_syn_only_data
    settings = Settings(teps=((0x21, None), (0x20, None)), syn_data=(0x20,))
    assert settings.to_json()["syn_data"] == [0x20]
    assert Settings.from_json(settings.to_json()) == settings
    config = settings.eno_config()
    assert config.syn_data_teps == frozenset({0x20}) and config.allow_syn_only_data
    for bad in ({"teps": [[0x20, None]], "syn_data": [0x21]},
                {"teps": [[0x20, None]], "syn_data": [0x20, 0x20]},
                {"teps": [[0x20, None]], "syn_data": 0x20},
                {"teps": [[0x20, None]], "syn_data": [True]}):
        with pytest.raises(ControlError):
            Settings.from_json(bad)


def test_result_round_trip():
    result = Result(local=("10.0.1.1", 1), remote=("10.0.2.1", 2), active=True,
                    state="enabled", outcome="negotiated", role="A", tep_id=0x20,
                    transcript="45032045040120", peer_data="ab")
    back = Result.from_json(result.to_json())
    assert back == result and back.transcript_bytes == bytes.fromhex("45032045040120")


def assert_removal_commands(ipt: list[str]) -> None:
    """remove_commands from an iptables listing: the entry jumps it shows, then the chains."""
    listing = {"OUTPUT": "-P OUTPUT ACCEPT\n-A OUTPUT -p tcp -j TCPINC_ENO_OUT\n"
                         "-A OUTPUT -p udp -j OTHER\n",
               "PREROUTING": "-A PREROUTING -p tcp -m multiport ! --ports 5001 "
                             "-j TCPINC_ENO_IN\n"}
    removal = remove_commands(listing)
    assert removal[0] == ["iptables", "-w", "-t", "mangle", "-D", "OUTPUT", "-p", "tcp", "-j",
                          "TCPINC_ENO_OUT"]
    assert removal[1][5:] == ["PREROUTING", "-p", "tcp", "-m", "multiport", "!", "--ports",
                              "5001", "-j", "TCPINC_ENO_IN"]
    chains = ["TCPINC_ENO_OUT", "TCPINC_ENO_IN", "TCPINC_ENO_HOLD", "TCPINC_ENO_RELEASE"]
    # Every chain flushed before any is deleted (the entry chains jump to the inner ones).
    assert removal[2:] == [[*ipt, "-F", c] for c in chains] + [[*ipt, "-X", c] for c in chains]
    # A half-made installation: only the chains the table shows.
    half = remove_commands({"chains": "-P OUTPUT ACCEPT\n-N TCPINC_ENO_HOLD\n"})
    assert half == [[*ipt, "-F", "TCPINC_ENO_HOLD"], [*ipt, "-X", "TCPINC_ENO_HOLD"]]


def test_rules_queue_only_handshake_segments_with_bypass():
    spec = HookSpec(queue=3, original_window=5, reply_window=3)
    rules = chain_rules(spec)
    # First a segment back from the hook is released, then every queueing rule jumps to the
    # hold chain (testbed/eno/marks.py), whose last rule is the queue, with bypass.
    assert rules[0] == ["-m", "mark", "--mark", "0x1000000/0x1000000", "-g",
                        "TCPINC_ENO_RELEASE"]
    assert all(r[-2:] == ["-j", "TCPINC_ENO_HOLD"] for r in rules[1:])
    assert rules[1] == ["-p", "tcp", "--tcp-flags", "SYN", "SYN", "-j", "TCPINC_ENO_HOLD"]
    assert rules[2] == ["-p", "tcp", "-m", "conntrack", "--ctdir", "ORIGINAL", "-m", "connbytes",
                        "--connbytes", "0:5", "--connbytes-dir", "original", "--connbytes-mode",
                        "packets", "-j", "TCPINC_ENO_HOLD"]
    assert rules[3][4:12] == ["--ctdir", "REPLY", "-m", "connbytes", "--connbytes", "0:3",
            "--connbytes-dir", "reply"]
    # The rest of the connection's first order_window packets, whatever the windows say.
    assert rules[4] == ["-p", "tcp", "-m", "connbytes", "--connbytes", "0:32",
                        "--connbytes-dir", "both", "--connbytes-mode", "packets", "-m",
                        "connbytes", "--connbytes", "0:16384", "--connbytes-dir", "both",
                        "--connbytes-mode", "bytes", "-j", "TCPINC_ENO_HOLD"]
    assert chain_rules(HookSpec(order_window=9))[4][5] == "0:9"
    assert len(rules) == 5
    install = install_commands(spec)
    ipt = ["iptables", "-w", "-t", "mangle"]
    assert install[0] == [*ipt, "-N", "TCPINC_ENO_HOLD"]
    assert install[1] == [*ipt, "-A", "TCPINC_ENO_HOLD", "-j", "NFQUEUE", "--queue-num", "3",
                          "--queue-bypass"]
    assert install[2] == [*ipt, "-N", "TCPINC_ENO_RELEASE"]
    assert install[3] == [*ipt, "-A", "TCPINC_ENO_RELEASE", "-j", "MARK", "--set-xmark",
                          "0x0/0x1000000"]
    assert install[4] == [*ipt, "-N", "TCPINC_ENO_OUT"]
    assert [*ipt, "-A", "OUTPUT", "-p", "tcp", "-j", "TCPINC_ENO_OUT"] in install
    assert install[-1] == [*ipt, "-A", "PREROUTING", "-p", "tcp", "-j", "TCPINC_ENO_IN"]
    assert len(install) == 2 + 2 + 2 * (1 + 5 + 1)
    assert_removal_commands(ipt)
    excluded = install_commands(HookSpec(exclude_ports=(5001, 5002)))
    assert excluded[10][8:13] == ["-m", "multiport", "!", "--ports", "5001,5002"]
    with pytest.raises(ValueError):
        HookSpec(original_window=2)
    with pytest.raises(ValueError, match="order_window"):
        HookSpec(order_window=7)
    with pytest.raises(ValueError, match="order_bytes"):
        HookSpec(order_bytes=0)


@pytest.fixture
def server() -> Iterator[tuple[ControlServer, str]]:
    """A control server on a fresh abstract name, served by a thread (no NFQUEUE needed)."""
    name = f"tcpinc-test-{uuid.uuid4().hex[:8]}"
    engine = HookEngine()
    srv = ControlServer(engine, name)
    stop = threading.Event()
    lock = threading.Lock()
    srv.lock = lock  # type: ignore[attr-defined]

    def loop() -> None:
        while not stop.is_set():
            for key, _ in srv.selector.select(0.02):
                with lock:
                    srv.ready(key.fileobj, time.monotonic())  # type: ignore[arg-type]
            with lock:
                srv.tick(time.monotonic())

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield srv, name
    finally:
        stop.set()
        thread.join(2)
        srv.close()


def test_listen_announce_and_waiting_for_a_result(server):
    srv, name = server
    with HookClient(name) as client:
        assert client.request("hello")["version"] == 1
        client.listen(5000, Settings(teps=((0x20, None),)))
        assert 5000 in srv.engine.listeners
        client.announce(40000, Settings(teps=((0x20, None),)))
        with srv.lock:  # type: ignore[attr-defined]
            srv.engine.process(segment(A, B, "S", 1), True, time.monotonic(), control_read=True)
        assert client.result(A, B) is not None
        assert client.result(A, B).outcome is None  # SYN sent, nothing decided yet

        def answer_later() -> None:
            time.sleep(0.1)
            with srv.lock:  # type: ignore[attr-defined]
                actions = srv.engine.process(segment(B, A, "SA", 9, 2), False, time.monotonic())
                assert actions.decided == [(*A, *B)]
                for key in actions.decided:  # as the hook performs them (hook._perform)
                    srv.decided(key)

        threading.Thread(target=answer_later).start()
        # A wait far longer than any scheduling delay: an outcome here proves the answer came
        # when the decision did (a timed-out wait answers with the undecided result).
        started = time.monotonic()
        result = client.result(A, B, wait=60.0)
        assert result.outcome == "fallback" and result.reason == "no_eno_in_synack"
        assert time.monotonic() - started < 30.0, "answered when the outcome came"
        started = time.monotonic()
        unknown = client.result(("10.9.9.9", 1), B, wait=60.0)
        assert unknown is None and time.monotonic() - started < 30.0, "not followed: no wait"
        assert client.stats()["counts"]["syn_out"] == 1
        with pytest.raises(ControlError, match="unknown op"):
            client.request("reboot")
        with pytest.raises(ControlError, match="bad port"):
            client.request("listen", port=0, settings={})
    deadline = time.monotonic() + 2
    while srv.engine.listeners and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not srv.engine.listeners, "a listener lives as long as its control connection"


def test_another_application_cannot_take_a_registered_port(server):
    _, name = server
    with HookClient(name) as first, HookClient(name) as second:
        first.listen(5000, Settings(teps=((0x20, None),)))
        with pytest.raises(ControlError, match="already registered"):
            second.listen(5000, Settings(teps=((0x20, None),)))


def test_no_hook_is_a_clear_error():
    with pytest.raises(HookUnavailableError):
        HookClient(f"tcpinc-nobody-{uuid.uuid4().hex[:8]}")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another uid")
def test_only_root_may_use_the_control_channel(server):
    srv, name = server
    pid = os.fork()
    if pid == 0:  # child: become nobody and try
        code = 1
        try:
            os.setuid(65534)
            client = HookClient(name, timeout=2)
            try:
                client.request("hello")
            except HookUnavailableError:
                code = 0  # refused: the server closed the connection
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert srv.refused == 1

