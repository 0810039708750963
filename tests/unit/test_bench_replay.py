"""The replay count of `tcpinc bench replay`, on made-up server records."""

from __future__ import annotations

from testbed.bench_replay import ARMS, CLAIMS_PROTECTION, replayed_requests


def test_replayed_requests_counts_request_ids_seen_again() -> None:
    lines = [{"event": "setup", "peer_port": 1}, {"event": "request", "request_id": 0},
             {"event": "setup", "peer_port": 2}, {"event": "request", "request_id": 1},
             {"event": "setup", "peer_port": 2}, {"event": "request", "request_id": 1},
             {"event": "setup", "peer_port": 3}, {"event": "failed", "peer_port": 3}]
    assert replayed_requests(lines) == {"requests_delivered": 3, "distinct_requests": 2,
                                        "replayed_delivered": 1, "server_connections": 4}
    assert replayed_requests([])["replayed_delivered"] == 0


def test_every_arm_says_whether_it_claims_protection() -> None:
    assert set(ARMS) == set(CLAIMS_PROTECTION)
