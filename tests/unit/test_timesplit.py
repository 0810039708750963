"""Tests for testbed.net.timesplit: both captures paired, TTFB split into path and host time.

Each test crafts the client-side and the server-side capture of one connection with scapy
(nanosecond pcaps, times chosen so every expected figure is exact), reads them back with the
project's reader and checks the split to the nanosecond.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw
from scapy.utils import EDecimal, PcapWriter

from experiments.common import split_record
from testbed.net.flows import Connection, connections
from testbed.net.pcap import read_segments
from testbed.net.timesplit import Hop, SplitError, empty_record, pair, split

C, S = "10.0.1.1", "10.0.1.2"
CPORT, SPORT = 40000, 5000
T0 = Decimal("1700000000")  # the application's connect start, on the host clock
ISN_C, ISN_S = 1000, 5000

# (direction, flags, seq offset, ack offset, payload, departs ms, arrives ms) after T0.
# Plain TCP over a 10 ms RTT (5 ms each way): every path time is 5.000 ms.
PLAIN = [
    ("c2s", "S", 0, None, b"", "0.100", "5.100"),
    ("s2c", "SA", 0, 1, b"", "5.200", "10.200"),
    ("c2s", "A", 1, 1, b"", "10.300", "15.300"),
    ("c2s", "PA", 1, 1, b"R" * 12, "10.500", "15.500"),
    ("s2c", "A", 1, 13, b"", "15.550", "20.550"),
    ("s2c", "PA", 1, 13, b"x" * 1024, "16.000", "21.000"),
]
PLAIN_TTFB_MS = 21.3  # the application read its first byte 0.3 ms after the arrival


def _packet(direction: str, flags: str, seq: int, ack: int | None, payload: bytes,
            at_ms: str, tsval: int | None = None) -> Packet:
    src, dst, sport, dport = (C, S, CPORT, SPORT) if direction == "c2s" else (S, C, SPORT, CPORT)
    isn, peer_isn = (ISN_C, ISN_S) if direction == "c2s" else (ISN_S, ISN_C)
    tcp = TCP(sport=sport, dport=dport, flags=flags, seq=isn + seq,
              ack=0 if ack is None else peer_isn + ack, window=65535,
              options=[] if tsval is None else [("Timestamp", (tsval, 0))])
    pkt = Ether() / IP(src=src, dst=dst) / tcp
    if payload:
        pkt = pkt / Raw(payload)
    pkt.time = EDecimal(T0 + Decimal(at_ms) / 1000)
    return pkt


def write_pair(tmp: Path, script: list[tuple], *, drop_at_server: tuple[int, ...] = ()
               ) -> tuple[Path, Path]:
    """The client-side and server-side pcaps of ``script``; ``drop_at_server``: indices of
    entries the server capture does not have."""
    client, server = [], []
    for i, (direction, flags, seq, ack, payload, depart, arrive, *tsval) in enumerate(script):
        at_client, at_server = (depart, arrive) if direction == "c2s" else (arrive, depart)
        fields = (direction, flags, seq, ack, payload)
        client.append(_packet(*fields, at_client, *tsval))
        if i not in drop_at_server:
            server.append(_packet(*fields, at_server, *tsval))
    paths = (tmp / "c.pcap", tmp / "c-server.pcap")
    for path, pkts in zip(paths, (client, server), strict=True):
        with PcapWriter(str(path), nano=True, sync=True) as writer:
            for pkt in sorted(pkts, key=lambda p: p.time):
                writer.write(pkt)
    return paths


def conn_of(path: Path) -> Connection:
    conns = connections(read_segments(path))
    assert len(conns) == 1
    return next(iter(conns.values()))


T_START_NS = int(T0) * 1_000_000_000


def test_plain_split_is_exact(tmp_path: Path) -> None:
    cpath, spath = write_pair(tmp_path, PLAIN)
    got = split(conn_of(cpath), conn_of(spath), t_start_ns=T_START_NS, ttfb_ms=PLAIN_TTFB_MS)
    # Chain: SYN -> SYN-ACK -> request -> response; the pure ACKs are not on it.
    assert got.hops == (Hop("c2s", 0.0, 5.0), Hop("s2c", 0.1, 5.0), Hop("c2s", 0.3, 5.0),
                        Hop("s2c", 0.5, 5.0))
    assert got.network_ms == pytest.approx(20.0, abs=1e-9)
    assert got.server_host_ms == pytest.approx(0.6, abs=1e-9)
    # 0.1 before the SYN left + 0.3 from SYN-ACK to request + 0.3 from arrival to read.
    assert got.client_host_ms == pytest.approx(0.7, abs=1e-9)
    assert got.network_ms + got.server_host_ms + got.client_host_ms == pytest.approx(21.3)
    assert got.protocol_latency_ms == got.network_ms
    record = got.as_record()
    assert record["split_error"] is None and record["network_ms"] == 20.0


def test_pairing_skips_lost_segments_and_pairs_retransmissions(tmp_path: Path) -> None:
    # The request is sent twice; the first copy is lost on the path. The copies differ in
    # their TCP timestamp, as a retransmission's do.
    script = [*PLAIN[:3],
              ("c2s", "PA", 1, 1, b"R" * 12, "10.500", "15.500", 7),
              ("c2s", "PA", 1, 1, b"R" * 12, "12.500", "17.500", 9),
              ("s2c", "PA", 1, 13, b"x" * 1024, "18.000", "23.000")]
    cpath, spath = write_pair(tmp_path, script, drop_at_server=(3,))
    client, server = conn_of(cpath), conn_of(spath)
    crossings = pair(client, server)
    assert [c.client_index for c in crossings] == [0, 1, 2, 4, 5]
    got = split(client, server, t_start_ns=T_START_NS, ttfb_ms=23.3)
    # The retransmission (sent 2 ms after the lost copy) is the client's: host time.
    assert [h.held_ms for h in got.hops] == pytest.approx([0.0, 0.1, 2.3, 0.5])
    assert got.network_ms == pytest.approx(20.0)
    assert got.client_host_ms == pytest.approx(0.1 + 2.3 + 0.3)


def test_identical_copies_on_one_side_only_are_ambiguous(tmp_path: Path) -> None:
    script = [*PLAIN[:3],
              ("c2s", "PA", 1, 1, b"R" * 12, "10.500", "15.500"),
              ("c2s", "PA", 1, 1, b"R" * 12, "12.500", "17.500"),
              ("s2c", "PA", 1, 13, b"x" * 1024, "18.000", "23.000")]
    cpath, spath = write_pair(tmp_path, script, drop_at_server=(3,))
    with pytest.raises(SplitError, match="2 identical copies of client capture #3 against 1"):
        split(conn_of(cpath), conn_of(spath), t_start_ns=T_START_NS, ttfb_ms=23.3)


def test_server_flight_not_answering_the_latest_client_flight(tmp_path: Path) -> None:
    # 0.5-RTT data: the server sends right after its SYN-ACK-time flight, before the client's
    # next flight arrives; the chain must use the client flight that arrived before it left.
    script = [
        ("c2s", "S", 0, None, b"", "0.000", "5.000"),
        ("s2c", "SA", 0, 1, b"", "5.100", "10.100"),
        ("c2s", "PA", 1, 1, b"H" * 100, "10.200", "15.200"),
        ("s2c", "PA", 1, 101, b"s" * 200, "15.400", "20.400"),
        ("s2c", "PA", 201, 101, b"x" * 300, "15.500", "20.500"),  # 0.5-RTT response
        ("c2s", "PA", 101, 501, b"F" * 50, "20.600", "25.600"),  # arrives after it left
    ]
    cpath, spath = write_pair(tmp_path, script)
    got = split(conn_of(cpath), conn_of(spath), t_start_ns=T_START_NS, ttfb_ms=20.7)
    assert [h.direction for h in got.hops] == ["c2s", "s2c", "c2s", "s2c"]
    assert got.server_host_ms == pytest.approx(0.1 + 0.3)
    assert got.network_ms == pytest.approx(20.0)
    assert got.client_host_ms == pytest.approx(0.1 + 0.2)


def test_response_missing_from_server_capture(tmp_path: Path) -> None:
    cpath, spath = write_pair(tmp_path, PLAIN, drop_at_server=(5,))
    with pytest.raises(SplitError, match="response segment .* not in the server capture"):
        split(conn_of(cpath), conn_of(spath), t_start_ns=T_START_NS, ttfb_ms=PLAIN_TTFB_MS)


def test_read_before_any_response_is_an_error(tmp_path: Path) -> None:
    cpath, spath = write_pair(tmp_path, PLAIN)
    with pytest.raises(SplitError, match="no response segment"):
        split(conn_of(cpath), conn_of(spath), t_start_ns=T_START_NS, ttfb_ms=20.0)


def test_application_start_after_the_syn_is_an_error(tmp_path: Path) -> None:
    cpath, spath = write_pair(tmp_path, PLAIN)
    with pytest.raises(SplitError, match="application times and captures disagree"):
        split(conn_of(cpath), conn_of(spath), t_start_ns=T_START_NS + 200_000, ttfb_ms=21.1)


def test_negative_path_time_is_an_error(tmp_path: Path) -> None:
    script = [*PLAIN[:5], ("s2c", "PA", 1, 13, b"x" * 1024, "16.000", "15.900")]
    cpath, spath = write_pair(tmp_path, script)
    with pytest.raises(SplitError, match="negative path time"):
        split(conn_of(cpath), conn_of(spath), t_start_ns=T_START_NS, ttfb_ms=16.2)


def _record(cpath: Path, spath: Path, **changes: object) -> dict[str, object]:
    record: dict[str, object] = {
        "pcap": str(cpath), "pcap_server": str(spath), "local_port": CPORT,
        "t_start_wall": float(T0), "ttfb_ms": PLAIN_TTFB_MS, "bytes_ok": True,
        "capture_dropped_client": 0, "capture_dropped_server": 0}
    return {**record, **changes}


def test_split_record_from_files(tmp_path: Path) -> None:
    cpath, spath = write_pair(tmp_path, PLAIN)
    got = split_record(_record(cpath, spath), "userspace", {})
    assert got["split_error"] is None
    assert got["network_ms"] == 20.0
    assert got["server_host_ms"] == 0.6
    assert got["client_host_ms"] == 0.7
    assert got["protocol_latency_ms"] == 20.0


@pytest.mark.parametrize(("changes", "backend", "reason"), [
    ({"capture_dropped_server": 3}, "userspace", "server capture dropped 3 packets"),
    ({"capture_dropped_client": None}, "userspace", "no client capture counters"),
    ({}, "netem", "netem backend: the delay is applied before the capture"),
    ({"bytes_ok": False}, "userspace", "connection failed"),
    ({"local_port": 1}, "userspace", "connection not found in the pcap capture"),
])
def test_split_record_left_empty_with_reason(tmp_path: Path, changes: dict[str, object],
                                             backend: str, reason: str) -> None:
    cpath, spath = write_pair(tmp_path, PLAIN)
    assert split_record(_record(cpath, spath, **changes), backend, {}) == empty_record(reason)


def test_split_record_missing_or_truncated_server_capture(tmp_path: Path) -> None:
    cpath, spath = write_pair(tmp_path, PLAIN)
    data = spath.read_bytes()
    spath.write_bytes(data[:-10])
    got = split_record(_record(cpath, spath), "userspace", {})
    assert got["network_ms"] is None
    assert str(got["split_error"]).startswith("capture c-server.pcap unreadable: ")
    assert "truncated data" in str(got["split_error"])
    spath.unlink()
    got = split_record(_record(cpath, spath), "userspace", {})
    assert "No such file" in str(got["split_error"])
