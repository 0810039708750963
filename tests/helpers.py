"""Shared test helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def assert_within(measured: float, expected: float, tol: float, rel: float = 0.0,
                  what: str = "value") -> None:
    """Assert |measured - expected| <= tol + rel * |expected| (absolute plus relative part)."""
    bound = tol + rel * abs(expected)
    assert abs(measured - expected) <= bound, (
        f"{what}: measured {measured:.4f}, expected {expected:.4f} +- {bound:.4f}"
    )


def counted_rounds(pcap: Path, records: list[dict[str, Any]]) -> list[tuple[Any, Any]]:
    """(rt_send, rt_resp) of each client record, counted from the capture's sequence and ACK
    numbers (experiments.common.round_trips), not from its clock."""
    from experiments.common import find_connection, round_trips
    from testbed.net.flows import connections
    from testbed.net.pcap import read_segments

    conns = connections(read_segments(pcap))
    out: list[tuple[Any, Any]] = []
    for record in records:
        conn = find_connection(conns, record)
        assert conn is not None, f"no captured connection for local port {record['local_port']}"
        counted = round_trips(conn, record)
        out.append((counted["rt_send"], counted["rt_resp"]))
    return out


def theory_rounds(proto: str) -> tuple[int, int]:
    """The theory row of ``proto`` as whole round trips (experiments/theory.py)."""
    from experiments.theory import THEORY_RTTS

    send, resp = THEORY_RTTS[proto]
    return int(send), int(resp)
