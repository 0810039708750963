"""Experiment plumbing without a network: round trips from real captures, the runner's
resume / shard / merge, and the analysis reading only the run directory."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from experiments import runner
from experiments.common import count_from_pcaps, counts_for_arm, find_connection, round_trips
from experiments.fallback import classify
from testbed.errors import ConfigError
from testbed.net.flows import connections
from testbed.net.pcap import read_segments

DATA = Path(__file__).resolve().parent.parent / "data"


def _records(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "name,expected",
    [
        # Plain TCP: SYN / SYN-ACK, then the request; the response one flight later.
        ("probe_plain_20ms", [(1, 2, "CSCSCS"), (1, 2, "CSCSCS")]),
        # TFO: the first connection only fetches a cookie; the second sends in the SYN.
        ("probe_plain_tfo_20ms", [(1, 2, "CSCSCS"), (0, 1, "CSCS")]),
    ],
)
def test_round_trips_counted_from_real_captures(name, expected):
    conns = connections(read_segments(DATA / f"{name}.pcap"))
    got = []
    for record in _records(name):
        conn = find_connection(conns, record)
        assert conn is not None
        counted = round_trips(conn, record)
        got.append((counted["rt_send"], counted["rt_resp"], counted["flights"]))
    assert got == expected


def test_count_from_pcaps_reads_the_run_directory(tmp_path):
    (tmp_path / "pcaps").mkdir()
    (tmp_path / "pcaps" / "x.pcap").write_bytes((DATA / "probe_plain_20ms.pcap").read_bytes())
    records = [{**r, "pcap": "/elsewhere/x.pcap", "warmup": False} for r in
               _records("probe_plain_20ms")]
    counted = count_from_pcaps(records, tmp_path)
    assert [(c["rt_send"], c["rt_resp"]) for c in counted] == [(1, 2), (1, 2)]


def test_counts_for_arm_keeps_only_resumed_connections_of_resumption_arms():
    assert counts_for_arm({"proto": "tls", "warmup": False})
    assert not counts_for_arm({"proto": "tls", "warmup": True})
    assert not counts_for_arm({"proto": "tcpcrypt-resume", "warmup": False, "resumed": False})
    assert counts_for_arm({"proto": "tls-0rtt", "warmup": False, "resumed": True})


@pytest.mark.parametrize(
    "record,cls",
    [
        ({"outcome": "encrypted", "session_id": "aa", "session_id_peer": "aa"}, "encrypted"),
        ({"outcome": "encrypted", "session_id": "aa", "session_id_peer": "bb"}, "encrypted-mitm"),
        ({"outcome": "plaintext", "bytes_ok": True}, "plaintext"),
        ({"outcome": "plaintext", "bytes_ok": False}, "plaintext-corrupted"),
        ({"outcome": "failed", "error": "EncryptionRequiredError: required"}, "failed:refused"),
        ({"outcome": "failed", "error": "IntegrityFailure: tag"}, "failed:integrity"),
        ({"outcome": "failed", "error": "ConnectionResetError: reset"}, "failed:reset"),
        ({"outcome": "failed", "error": "ConnectionRefusedError: Connection refused"},
         "failed:reset"),
        ({"outcome": "failed", "error": "TimeoutError: timed out"}, "failed:timeout"),
        ({"outcome": "failed", "error": "weird"}, "failed:other"),
    ],
)
def test_fallback_classification(record, cls):
    assert classify(record) == cls


@pytest.fixture
def fake_experiment(monkeypatch):
    """A registered experiment whose points are numbers and whose records count calls."""
    module = types.ModuleType("experiments.fake")
    calls: list[int] = []

    def points(profile):
        return [{"x": i} for i in range(5)]

    def run_point(point, ctx):
        calls.append(point["x"])
        if point["x"] == ctx.__dict__.get("fail_at"):
            raise KeyboardInterrupt
        return [{"y": point["x"] * 10}]

    def analyse(run_dir):
        lines = (run_dir / "records.jsonl").read_text().splitlines()
        return {"records": len(lines), "sum": sum(json.loads(x)["y"] for x in lines)}

    module.points, module.run_point, module.analyse = points, run_point, analyse
    module.calls = calls
    monkeypatch.setitem(sys.modules, "experiments.fake", module)
    monkeypatch.setitem(runner.EXPERIMENTS, "fake", "experiments.fake")
    return module


def test_runner_resumes_without_redoing_finished_points(tmp_path, fake_experiment):
    ctx = runner.RunContext(tmp_path / "run", "quick", None, 1, "userspace")
    ctx.fail_at = 3  # type: ignore[attr-defined]
    with pytest.raises(KeyboardInterrupt):
        runner.run_experiment("fake", ctx, {"profile": "quick", "seed": 1})
    assert fake_experiment.calls == [0, 1, 2, 3]
    ctx.fail_at = None  # type: ignore[attr-defined]
    summary = runner.run_experiment("fake", ctx, {"profile": "quick", "seed": 1})
    assert fake_experiment.calls == [0, 1, 2, 3, 3, 4]
    assert summary == {"records": 5, "sum": 100}
    meta = json.loads((tmp_path / "run" / "metadata.json").read_text())
    assert meta["finished"] and meta["link_backend"] == "userspace"
    assert meta["delay_helper"]["name"] == "c"
    with pytest.raises(ConfigError, match="seed"):
        runner.run_experiment("fake", ctx, {"profile": "quick", "seed": 2})


def test_runner_runs_only_the_points_a_filter_keeps(tmp_path, fake_experiment):
    ctx = runner.RunContext(tmp_path / "run", "quick", None, 1, "userspace")
    summary = runner.run_experiment("fake", ctx, {"profile": "quick", "seed": 1},
                                    only=lambda p: p["x"] % 2 == 1)
    assert fake_experiment.calls == [1, 3]
    assert summary == {"records": 2, "sum": 40}
    assert json.loads((ctx.run_dir / "metadata.json").read_text())["points_total"] == 2


def test_shards_partition_the_grid_and_merge_back(tmp_path, fake_experiment):
    dirs = []
    for i in (1, 2):
        ctx = runner.RunContext(tmp_path / f"s{i}", "quick", None, 1, "userspace")
        runner.run_experiment("fake", ctx, {"profile": "quick", "seed": 1, "shard": f"{i}/2"},
                              shard=runner.parse_shard(f"{i}/2"))
        dirs.append(ctx.run_dir)
    assert sorted(fake_experiment.calls) == [0, 1, 2, 3, 4]
    merged = runner.merge(dirs, tmp_path / "merged")
    assert merged["complete"] and merged["records"] == 5 and merged["sum"] == 100
    partial = runner.merge(dirs[:1], tmp_path / "partial")
    assert not partial["complete"]
    with pytest.raises(ConfigError):
        runner.merge(dirs, tmp_path / "merged")  # exists


@pytest.mark.parametrize("text", ["0/2", "3/2", "a/b", "1-2"])
def test_bad_shard(text):
    with pytest.raises(ConfigError):
        runner.parse_shard(text)


def test_latency_summary_keeps_points_whose_connections_all_failed():
    import pandas as pd

    from experiments.latency import summarise

    base = {"warmup": False, "connect_ms": 10.0, "applied_rtt_ms": 10.0}
    rows = [{**base, "proto": "plain", "rtt_ms": 10, "bytes_ok": True, "ttfb_ms": 20.5},
            {**base, "proto": "plain", "rtt_ms": 10, "bytes_ok": False, "ttfb_ms": None},
            {**base, "proto": "plain", "rtt_ms": 50, "bytes_ok": False, "ttfb_ms": None}]
    summary = summarise(pd.DataFrame(rows)).set_index("rtt_ms")
    assert summary.loc[10, "n"] == 1 and summary.loc[10, "failed"] == 1
    assert summary.loc[10, "within_1ms_2pct"]
    assert summary.loc[50, "n"] == 0 and summary.loc[50, "failed"] == 1
    assert summary.loc[50, "within_1ms_2pct"] is None


def test_latency_excess_is_built_on_the_time_split():
    """error_ms from the TTFB, protocol_error_ms from the split's protocol latency, host
    times as medians, eno_query from the stream's phases; a connection without a split is
    counted in split_empty and left out of the split medians."""
    import pandas as pd

    from experiments.latency import excess

    base = {"warmup": False, "bytes_ok": True, "rtt_ms": 10, "applied_rtt_ms": 10.0,
            "split_error": None}
    rows = [  # tcpcrypt: first byte after 3 RTTs
        {**base, "proto": "tcpcrypt", "connect_ms": 11.0, "request_ms": 23.0, "ttfb_ms": 34.5,
         "network_ms": 30.1, "protocol_latency_ms": 30.1, "client_host_ms": 3.4,
         "server_host_ms": 1.0, "phases_ms": {"tcp_connected": 11.0, "eno_result": 11.5}},
        {**base, "proto": "tcpcrypt", "connect_ms": 11.0, "request_ms": 23.0, "ttfb_ms": 36.5,
         "network_ms": None, "protocol_latency_ms": None, "client_host_ms": None,
         "server_host_ms": None, "split_error": "server capture dropped 2 packets",
         "phases_ms": {"tcp_connected": 11.0, "eno_result": 11.5}},
        {**base, "proto": "plain-tfo", "connect_ms": 0.2, "request_ms": 0.3, "ttfb_ms": 10.6,
         "network_ms": 10.0, "protocol_latency_ms": 10.0, "client_host_ms": 0.4,
         "server_host_ms": 0.2, "phases_ms": {"connected": 0.2}},
        {**base, "proto": "plain", "connect_ms": 10.1, "request_ms": 10.2, "ttfb_ms": None,
         "bytes_ok": False, "phases_ms": {}, "network_ms": None, "protocol_latency_ms": None,
         "client_host_ms": None, "server_host_ms": None,
         "split_error": "connection failed"},  # failed: left out
    ]
    table = excess(pd.DataFrame(rows)).set_index("proto")
    crypt, tfo = table.loc["tcpcrypt"], table.loc["plain-tfo"]
    assert crypt["error_ms"] == pytest.approx(5.5)  # median of 4.5 and 6.5
    assert crypt["protocol_error_ms"] == pytest.approx(0.1)
    assert crypt["client_host_ms"] == pytest.approx(3.4)
    assert crypt["server_host_ms"] == pytest.approx(1.0)
    assert crypt["split_empty"] == 1
    assert crypt["eno_query_ms"] == pytest.approx(0.5)
    assert tfo["error_ms"] == pytest.approx(0.6) and tfo["protocol_error_ms"] == pytest.approx(0)
    assert tfo["split_empty"] == 0 and pd.isna(tfo["eno_query_ms"])
    assert "plain" not in table.index


def test_cost_grid_includes_the_wakeup_benchmark():
    from experiments import cost

    assert {"bench": "wakeup"} in cost.points("quick")
    assert cost.PROFILES["quick"]["wakeup_rounds"] < cost.PROFILES["full"]["wakeup_rounds"]


def test_cost_floor_point_measures_each_tep_variant_once_per_idle_time(monkeypatch, tmp_path):
    from experiments import cost
    from experiments.runner import RunContext
    from testbed import bench_endpoints

    calls = []

    def fake_cpu(arm, count, idle_s=0.0):
        calls.append((bench_endpoints.CPU_VARIANT[arm], count, idle_s))
        return 0.1 + idle_s, 0.2 + idle_s

    monkeypatch.setattr(bench_endpoints, "cpu_ms", fake_cpu)
    assert {"bench": "floor"} in cost.points("quick")
    rows = cost.run_point({"bench": "floor"}, RunContext(tmp_path, "quick", None, 1, "auto"))
    # tls and tls-noeno run the same TEP variant: measured once per idle time.
    assert sorted(calls) == sorted([(v, 4, idle) for v in
                                    (("tls", False), ("tcpcrypt", False), ("tcpcrypt", True))
                                    for idle in (0.01, 0.2)])
    assert [(r["arm"], r["idle_ms"]) for r in rows] == [
        (arm, idle) for idle in cost.FLOOR_IDLE_MS for arm in cost.FLOOR_ARMS]
    tls_noeno = next(r for r in rows if r["arm"] == "tls-noeno" and r["idle_ms"] == 200.0)
    assert tls_noeno == {"bench": "floor", "arm": "tls-noeno", "idle_ms": 200.0,
                         "client_chain_cold_ms": pytest.approx(0.3),
                         "server_chain_cold_ms": pytest.approx(0.4)}


def test_loss_counts_downgrades_of_encrypting_arms(tmp_path):
    import json

    import pandas as pd

    from experiments import loss

    base = {"loss_percent": 10.0, "bytes_ok": True, "ttfb_ms": 70.0, "connect_ms": 20.0,
            "warmup": False, "phases_ms": {}}
    records = [
        {**base, "proto": "tcpcrypt", "conn": 0, "outcome": "encrypted"},
        {**base, "proto": "tcpcrypt", "conn": 1, "outcome": "plaintext",
         "fallback_reason": "syn_retransmission", "connect_ms": 3020.0},
        {**base, "proto": "plain", "conn": 0, "outcome": "plaintext"},
    ]
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert loss.analyse(tmp_path)["fell_back"] == 1
    summary = pd.read_csv(tmp_path / "loss_summary.csv").set_index("proto")
    assert summary.loc["tcpcrypt", "fell_back"] == 1 and summary.loc["plain", "fell_back"] == 0
    assert summary.loc["tcpcrypt", "over_1s"] == 1


@pytest.mark.parametrize("record, expected", [
    # The stream's phase names (testbed/stream.py): the TEP handshake end wins.
    ({"proto": "tcpcrypt", "connect_ms": 20.5, "ttfb_ms": 61.0,
      "phases_ms": {"tcp_connected": 20.5, "eno_result": 21.0, "tep_handshake_done": 41.2}},
     41.2),
    ({"proto": "tls-noeno", "connect_ms": 20.3, "ttfb_ms": 61.0,
      "phases_ms": {"tcp_connected": 20.3, "tep_handshake_done": 40.9}}, 40.9),
    ({"proto": "plain", "connect_ms": 20.1, "ttfb_ms": 40.4, "phases_ms": {"connected": 20.1}},
     20.1),
    ({"proto": "plain-tfo", "connect_ms": 0.1, "ttfb_ms": 20.6, "phases_ms": {"connected": 0.1}},
     20.6),
])
def test_loss_handshake_time_is_the_tep_handshake_end(record, expected):
    from experiments.loss import handshake_ms

    assert handshake_ms(record) == expected


def _capture(tmp_path, segments) -> list:
    """Write (direction, flags, seq, ack, payload, options) as a pcap; read it back."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    packets = []
    for i, (direction, flags, seq, ack, payload, options) in enumerate(segments):
        c2s = direction == "c2s"
        ip = IP(src="10.0.0.1" if c2s else "10.0.0.2", dst="10.0.0.2" if c2s else "10.0.0.1")
        tcp = TCP(sport=40000 if c2s else 5000, dport=5000 if c2s else 40000, flags=flags,
                  seq=seq, ack=ack, window=500, options=options)
        packet = Ether() / ip / tcp / payload
        packet.time = 1.0 + i / 1000
        packets.append(packet)
    path = tmp_path / "x.pcap"
    wrpcap(str(path), packets)
    (conn,) = connections(read_segments(path)).values()
    return conn


HANDSHAKE = [("c2s", "S", 100, 0, b"", []), ("s2c", "SA", 500, 101, b"", []),
             ("c2s", "A", 101, 501, b"", [])]


def test_duplicate_acks_flags_sack_blocks_and_repeated_acks(tmp_path):
    from experiments.common import duplicate_acks

    in_order = _capture(tmp_path, HANDSHAKE + [
        ("c2s", "PA", 101, 501, b"a" * 10, []), ("c2s", "PA", 111, 501, b"b" * 10, []),
        ("s2c", "A", 501, 111, b"", []), ("s2c", "A", 501, 121, b"", []),
        ("s2c", "PA", 501, 121, b"r" * 5, []), ("c2s", "A", 121, 506, b"", [])])
    assert duplicate_acks(in_order) == []
    # The second segment overtook the first: the server acknowledges 101 again, with SACK.
    overtaken = _capture(tmp_path, HANDSHAKE + [
        ("c2s", "PA", 111, 501, b"b" * 10, []), ("c2s", "PA", 101, 501, b"a" * 10, []),
        ("s2c", "A", 501, 101, b"", [("SAck", (111, 121))]), ("s2c", "A", 501, 121, b"", [])])
    assert duplicate_acks(overtaken) == [5]
    # A repeated pure ACK while data is outstanding, no SACK (RFC 5681 §2).
    repeated = _capture(tmp_path, HANDSHAKE + [
        ("c2s", "PA", 101, 501, b"a" * 10, []), ("c2s", "PA", 111, 501, b"b" * 10, []),
        ("s2c", "A", 501, 111, b"", []), ("s2c", "A", 501, 111, b"", [])])
    assert duplicate_acks(repeated) == [6]


def test_overtaking_acks_leave_out_dsack_reports(tmp_path):
    from experiments.common import dsack_only, duplicate_acks, overtaking_acks, round_trips

    # A needless retransmission of 101-111, reported with a D-SACK below the ACK (RFC 2883).
    resent = _capture(tmp_path, HANDSHAKE + [
        ("c2s", "PA", 101, 501, b"a" * 10, []), ("s2c", "A", 501, 111, b"", []),
        ("c2s", "PA", 101, 501, b"a" * 10, []),
        ("s2c", "A", 501, 111, b"", [("SAck", (101, 111))])])
    assert duplicate_acks(resent) == [6] and overtaking_acks(resent) == []
    assert dsack_only(resent.segments[6].segment)
    # A SACK block above the ACK is a reordering, D-SACK or not beside it.
    overtaken = _capture(tmp_path, HANDSHAKE + [
        ("c2s", "PA", 111, 501, b"b" * 10, []), ("c2s", "PA", 101, 501, b"a" * 10, []),
        ("s2c", "A", 501, 101, b"", [("SAck", (111, 121))]), ("s2c", "A", 501, 121, b"", [])])
    assert overtaking_acks(overtaken) == [5]
    assert not dsack_only(overtaken.segments[5].segment)
    record = {"t_start_wall": 0.0, "ttfb_ms": None, "request_ms": None}
    assert {k: round_trips(resent, record)[k] for k in ("dup_acks", "dsacks")} == {
        "dup_acks": 1, "dsacks": 1}
    assert {k: round_trips(overtaken, record)[k] for k in ("dup_acks", "dsacks")} == {
        "dup_acks": 1, "dsacks": 0}


def test_fallback_client_timeout_follows_the_kernels_syn_timing(tmp_path, monkeypatch):
    from experiments import fallback

    path = tmp_path / "tcp_syn_linear_timeouts"
    monkeypatch.setattr(fallback, "LINEAR_TIMEOUTS", path)
    assert fallback.client_timeout_s() == 10.0  # no such sysctl: exponential backoff
    path.write_text("4\n")
    assert fallback.client_timeout_s() == 5.0
    path.write_text("2\n")
    assert fallback.client_timeout_s() == 10.0


def test_fallback_heatmap_leaves_cells_no_point_ran_blank(tmp_path):
    """The quick matrix runs the SYN-data arms only against the SYN boxes: the other boxes'
    cells of those arms are empty in the grid, not an error."""
    import pandas as pd

    from experiments.fallback import heatmap

    matrix = pd.DataFrame([
        {"proto": "tls", "policy": "required", "middlebox": "passthrough",
         "outcome": "encrypted"},
        {"proto": "tls", "policy": "required", "middlebox": "dpi-443", "outcome": "failed:reset"},
        {"proto": "tls-syn", "policy": "required", "middlebox": "passthrough",
         "outcome": "encrypted"},
    ])
    heatmap(matrix, tmp_path / "heatmap.png")
    assert (tmp_path / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fallback_heatmap_of_one_middlebox_lays_out_without_warning(tmp_path):
    """A one-column grid (a test of one box) still has room for the arm labels: matplotlib's
    layout gave up on it before ("Tight layout not applied", 36 warnings per test run)."""
    import warnings

    import pandas as pd

    from experiments.fallback import heatmap

    matrix = pd.DataFrame([
        {"proto": "tcpcrypt-syn", "policy": "opportunistic", "middlebox": "replay-syn",
         "outcome": "encrypted"},
        {"proto": "plain", "policy": "-", "middlebox": "replay-syn", "outcome": "plaintext"},
    ])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        heatmap(matrix, tmp_path / "heatmap.png")
    assert (tmp_path / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
