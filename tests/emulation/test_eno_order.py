"""No segment overtakes another on either ENO datapath (testbed/eno/marks.py for the hook).

The arms whose handshakes put several segments of one connection back to back at the edge of
the hook's queue windows, and the other ENO arms, on a loss-free link: a duplicate ACK or
SACK block in either capture means a later segment went around an earlier one
(experiments.common.overtaking_acks). A D-SACK (RFC 2883) only reports a needless
retransmission, which a loaded host's late answer can cause; it is shown with a failure but
not counted as a reordering.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import topologies
from experiments.common import duplicate_acks, overtaking_acks
from testbed.eno.bpf.attach import support_problem
from testbed.net.flows import connections
from testbed.net.network import Network
from testbed.net.pcap import read_segments
from testbed.workload import (
    SERVER_PORT,
    SYN_ARMS,
    Workload,
    needs_hook,
    run_workload,
    server_pcap,
)
from topologies import PathShape

# The arms duplicate ACKs were seen in before the order window (marks.py), the ENO arms
# beside them, and (below) the arms with SYN data.
ARMS = ["tcpcrypt-resume", "tls-resume", "tls-0rtt", "eno-test", "tcpcrypt", "tls"]
CONNECTIONS = 4


def _acks(pcap: Path) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Per capture and connection: the overtaking ACKs, and every duplicate ACK / SACK."""
    overtaken: dict[str, list[int]] = {}
    every: dict[str, list[int]] = {}
    for side, path in (("client", pcap), ("server", server_pcap(pcap))):
        conns = [c for c in connections(read_segments(path)).values()
                 if c.key.server_port == SERVER_PORT]
        assert len(conns) == CONNECTIONS, (side, len(conns))
        for index, conn in enumerate(conns):
            if found := overtaking_acks(conn):
                overtaken[f"{side} #{index}"] = found
            if found := duplicate_acks(conn):
                every[f"{side} #{index}"] = found
    return overtaken, every


def _cases() -> list[tuple[str, str]]:
    """Every arm on each datapath that serves it (SYN data only on the hook)."""
    datapaths = ["nfqueue"] if support_problem() is not None else ["nfqueue", "bpf"]
    cases = [(arm, d) for arm in ARMS for d in datapaths]
    return cases + [(arm, "nfqueue") for arm in sorted(SYN_ARMS)]


@pytest.mark.parametrize(("arm", "datapath"), _cases())
def test_no_segment_overtakes_another(tmp_path: Path, arm: str, datapath: str) -> None:
    assert datapath == "nfqueue" or not needs_hook(arm)
    pcap = tmp_path / f"{arm}.pcap"
    with Network(topologies.create("direct", path=PathShape(rtt_ms=10))) as net:
        records = run_workload(net, Workload(proto=arm, connections=CONNECTIONS,
                                             eno_datapath=datapath), pcap=pcap)
    assert all(r["bytes_ok"] and r["eno"] == "negotiated" for r in records), [
        {k: r.get(k) for k in ("conn", "eno", "bytes_ok", "error", "fallback_reason", "syn_data")}
        for r in records]
    assert all(r["eno_datapath"] == datapath for r in records)
    overtaken, every = _acks(pcap)
    assert overtaken == {}, f"duplicate ACKs / SACK blocks, D-SACKs included: {every}"
