"""Shared test helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from middleboxes.packet import seq_after
from testbed.net.flows import Connection


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


def close_problems(conn: Connection) -> tuple[list[str], list[str]]:
    """(problems, resets after the close completed) of one capture of a connection.

    Problems: a direction that sent no FIN, and the first reset seen before the close
    completed (both FINs sent and each acknowledged by the other side). A reset after that
    is a closed socket's answer to a late segment, listed apart.
    """
    out, late = [], []
    fin_end: dict[str, int] = {}  # per direction: the sequence number just past its FIN
    acked: set[str] = set()  # directions whose FIN the other side acknowledged
    for cs in conn.segments:
        s = cs.segment
        where = f"RST {cs.direction} at segment {cs.index}"
        if s.is_rst:
            if acked == {"c2s", "s2c"}:
                late.append(where)
            elif not out:  # only resets go in before the loop ends: the first one is named
                out.append(where)
            continue
        other = "s2c" if cs.direction == "c2s" else "c2s"
        if s.is_ack and other in fin_end and not seq_after(fin_end[other], s.ack):
            acked.add(other)
        if s.is_fin and cs.direction not in fin_end:
            fin_end[cs.direction] = (s.seq + s.payload_len + 1) % 2**32
    for direction in ("c2s", "s2c"):
        if direction not in fin_end:
            out.append(f"no FIN {direction}")
    return out, late
