"""Matching the server's per-connection records to the client's (testbed/workload.py)."""

from __future__ import annotations

import json

from testbed.workload import merge_server_views, read_server_records


def test_a_reused_port_is_matched_by_order_and_failures_update_the_latest(tmp_path):
    path = tmp_path / "server.jsonl"
    lines = [
        {"event": "setup", "peer_port": 4000, "outcome": "plaintext", "session_id": "20aa",
         "eno": "negotiated", "error": None, "sched_policy": "SCHED_FIFO:5"},
        {"event": "setup", "peer_port": 5000, "outcome": "failed", "error": "E: x",
         "fallback_reason": "no_eno_in_ack"},
        {"event": "setup", "peer_port": 4000, "outcome": "plaintext", "session_id": "20bb",
         "eno": "negotiated", "error": None},
        {"event": "failed", "peer_port": 4000, "outcome": "failed", "error": "Split"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    view = read_server_records(path)
    assert [e["session_id"] for e in view[4000]] == ["20aa", "20bb"]
    assert view[4000][1]["error"] == "Split" and view[4000][0]["error"] is None
    records = [{"local_port": 4000}, {"local_port": 5000}, {"local_port": 4000},
               {"error": "refused before connecting"}]
    merge_server_views(records, view)
    assert [r["session_id_peer"] for r in records] == ["20aa", None, "20bb", None]
    assert records[1]["peer_fallback_reason"] == "no_eno_in_ack"
    assert records[2]["peer_outcome"] == "failed" and records[3]["peer_outcome"] is None
    assert [r["peer_sched_policy"] for r in records] == ["SCHED_FIFO:5", None, None, None]
    assert read_server_records(tmp_path / "missing.jsonl") == {}


def test_connections_are_matched_by_request_id_through_a_proxy(tmp_path):
    path = tmp_path / "server.jsonl"
    lines = [
        {"event": "setup", "peer_port": 40001, "outcome": "encrypted", "session_id": "30aa"},
        {"event": "request", "peer_port": 40001, "request_id": 1},
        {"event": "setup", "peer_port": 40002, "outcome": "encrypted", "session_id": "30bb"},
        {"event": "request", "peer_port": 40002, "request_id": 0},
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    # The client saw other ports (the proxy's connections to the server used new ones).
    records = [{"conn": 0, "local_port": 50000}, {"conn": 1, "local_port": 50001}]
    merge_server_views(records, read_server_records(path))
    assert [r["session_id_peer"] for r in records] == ["30bb", "30aa"]
