"""A replayed SYN with data, through the replay-syn box (RFC 7413 §6.1, RFC 8446 §8).

Plain TCP Fast Open hands the copy's data to the server application again; TLS 1.3 0-RTT
early data on the SYN is refused on its ticket's second use (OpenSSL anti-replay), so an
arm claiming protection delivers 0 replayed bytes.
"""

from __future__ import annotations

from testbed.bench_replay import measure


def test_plain_tfo_delivers_replayed_syn_data_and_tls_0rtt_does_not() -> None:
    plain = measure("plain-tfo", connections=4)
    assert plain["client_ok"] == 4
    # The first connection fetches the cookie (no data on its SYN); the others carry the
    # request on the SYN and the box replays them. Load may let a copy meet the original
    # connection still open (then it is a mere duplicate), so at least one, not all three.
    assert plain["replayed_delivered"] >= 1
    tls = measure("tls-noeno-0rtt-tfo", connections=4)
    assert tls["client_ok"] == 4
    assert tls["server_connections"] > tls["distinct_requests"], "the copies reached the server"
    assert tls["replayed_delivered"] == 0


def test_0rtt_as_syn_data_of_the_tls_syn_tep_is_replay_safe_only_with_anti_replay() -> None:
    """Under ENO (tls-0rtt-syn) the server starts the SYN TEP at the SYN (testbed/synstream.py),
    before A's ACK could confirm anything: OpenSSL's single-use tickets are what keep a
    replayed SYN's early data from the application."""
    guarded = measure("tls-0rtt-syn", connections=4)
    assert guarded["client_ok"] == 4 and guarded["claims_protection"]
    assert guarded["server_connections"] > guarded["distinct_requests"], "copies arrived"
    assert guarded["replayed_delivered"] == 0
    open_ = measure("tls-0rtt-syn-noantireplay", connections=4)
    assert open_["client_ok"] == 4 and not open_["claims_protection"]
    assert open_["replayed_delivered"] >= 1  # as for plain TFO: load may merge a copy


def test_a_replayed_resumed_tcpcrypt_request_on_the_syn_is_not_delivered() -> None:
    """tcpcrypt-resume-syn: a copy of the SYN names a resumption identifier already used, so
    the server's hook answers it with a fresh exchange (single-use answers, RFC 8548 §3.5) and
    the copy's frames, protected under the resumed keys, never reach the application."""
    got = measure("tcpcrypt-resume-syn", connections=4)
    assert got["client_ok"] == 4 and got["claims_protection"]
    assert got["server_connections"] > got["distinct_requests"], "copies arrived"
    assert got["replayed_delivered"] == 0
