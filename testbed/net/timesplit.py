"""Endpoint time separated from network time, from a client-side and a server-side capture.

Theory of operation
-------------------
The client's and the server's interface are captured by two tcpdumps on the same host clock
(network namespaces share CLOCK_REALTIME), so one segment seen in both captures gives the
time it spent on the path: its departure from the sender's interface to its arrival at the
receiver's. ``pair`` matches the segments of one connection across the two captures by what
crosses the wire unchanged on a path without NAT or sequence rewriting (direction, sequence
and acknowledgement numbers, flags, payload length, TCP option bytes: a retransmission
carries a newer timestamp, RFC 7323 section 3). Copies that still look alike pair only
when both captures hold the same number of them; otherwise they are ambiguous.

``split`` then walks the critical chain backwards from the segment that delivered the first
response byte to the client. Each step: the host that sent the current segment held it from
the arrival of the last segment of the other direction that carries something (payload, SYN,
FIN, RST; pure ACKs never make a peer wait, RFC 9293 section 3.8) and arrived before that
departure, to the departure itself. That earlier segment becomes the current one, until the
client's first segment (its SYN), which answers nothing. Along the chain:

- ``network_ms``: the sum of the path times of the chain's segments;
- ``server_host_ms``: the sum of the server's hold times;
- ``client_host_ms``: the rest of the application's time to first byte: before its SYN left,
  its own hold times, and from the response's arrival at its interface to the read.

The three add up to the TTFB the client measured, and ``protocol_latency_ms`` (TTFB minus
host time) equals ``network_ms``: what the design costs on that path, on any machine.
Picking the latest arrival makes the host times a lower bound: a host that answered an
earlier segment while a later one was in flight is charged less, never more.

Nothing is guessed: a capture with kernel drops, a missing or truncated server capture, a
chain segment seen on one side only, or a negative interval gives ``SplitError`` with the
reason, and the caller leaves that connection's split empty.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from testbed.net.flows import Connection, ConnSegment
from testbed.net.pcap import Direction

_NS = 1_000_000


class SplitError(Exception):
    """This connection's time cannot be split; the message is the reason for the record."""


@dataclass(frozen=True, slots=True)
class Crossing:
    """One segment seen at both ends: departure and arrival in integer ns of the host clock."""

    direction: Direction
    depart_ns: int
    arrive_ns: int
    client_index: int  # position in the client capture's connection
    significant: bool  # carries payload, SYN, FIN or RST


@dataclass(frozen=True, slots=True)
class Hop:
    """A step of the critical chain: the sender held ``held_ms``, then the path took
    ``path_ms``. The first hop (the client's SYN) holds nothing from the capture's view."""

    direction: Direction
    held_ms: float
    path_ms: float


@dataclass(frozen=True, slots=True)
class TimeSplit:
    network_ms: float
    client_host_ms: float
    server_host_ms: float
    hops: tuple[Hop, ...]

    @property
    def protocol_latency_ms(self) -> float:
        return self.network_ms

    def as_record(self) -> dict[str, object]:
        return {
            "network_ms": round(self.network_ms, 4),
            "client_host_ms": round(self.client_host_ms, 4),
            "server_host_ms": round(self.server_host_ms, 4),
            "protocol_latency_ms": round(self.protocol_latency_ms, 4),
            "split_hops": [[h.direction, round(h.held_ms, 4), round(h.path_ms, 4)]
                           for h in self.hops],
            "split_error": None,
        }


def empty_record(reason: str) -> dict[str, object]:
    """The record keys of a connection whose split is left empty, with the reason."""
    return {"network_ms": None, "client_host_ms": None, "server_host_ms": None,
            "protocol_latency_ms": None, "split_hops": None, "split_error": reason}


def _wire_key(cs: ConnSegment) -> tuple[object, ...]:
    s = cs.segment
    return (cs.direction, s.seq, s.ack, s.flags, s.payload_len, s.options_raw)


def pair(client: Connection, server: Connection) -> list[Crossing]:
    """Segments seen in both captures, in client-capture order. A segment seen on one side
    only (lost on the path) is left out; SplitError if copies that carry something cannot be
    told apart (a different number of identical copies on each side)."""
    at_server: dict[tuple[object, ...], list[ConnSegment]] = defaultdict(list)
    for cs in server.segments:
        at_server[_wire_key(cs)].append(cs)
    at_client: dict[tuple[object, ...], int] = defaultdict(int)
    for cs in client.segments:
        at_client[_wire_key(cs)] += 1
    used: dict[tuple[object, ...], int] = defaultdict(int)
    out: list[Crossing] = []
    for cs in client.segments:
        key = _wire_key(cs)
        k = used[key]
        copies = at_server.get(key, [])
        if not copies:
            continue
        if len(copies) != at_client[key]:
            if cs.segment.seg_len or cs.segment.is_rst:
                raise SplitError(f"{at_client[key]} identical copies of client capture "
                                 f"#{cs.index} against {len(copies)} at the server")
            continue  # identical pure ACKs never make the chain
        used[key] = k + 1
        here, there = cs.segment.ts_ns, copies[k].segment.ts_ns
        depart, arrive = (here, there) if cs.direction == "c2s" else (there, here)
        s = cs.segment
        out.append(Crossing(cs.direction, depart, arrive, cs.index,
                            bool(s.payload_len or s.is_syn or s.is_fin or s.is_rst)))
    return out


def _response(client: Connection, t_first_ns: int) -> ConnSegment:
    """The last server segment with payload that reached the client interface before the
    application read its first response byte."""
    last = None
    for cs in client.segments:
        if cs.direction == "s2c" and cs.segment.payload_len and cs.segment.ts_ns <= t_first_ns:
            last = cs
    if last is None:
        raise SplitError("no response segment reached the client before its first read")
    return last


def chain(crossings: list[Crossing], end: Crossing) -> list[Crossing]:
    """The critical chain ending in ``end``, first segment first (module docstring)."""
    out = [end]
    current = end
    while True:
        answered = [c for c in crossings if c.significant and c.direction != current.direction
                    and c.arrive_ns <= current.depart_ns]
        if not answered:
            break
        current = max(answered, key=lambda c: c.arrive_ns)
        out.append(current)
    out.reverse()
    if out[0].direction != "c2s":
        raise SplitError("the chain does not start with a client segment "
                         "(the server sent before anything arrived)")
    return out


def split(client: Connection, server: Connection, *, t_start_ns: int, ttfb_ms: float
          ) -> TimeSplit:
    """Split the TTFB of one connection (it started at ``t_start_ns`` on the host clock)."""
    if not server.segments:
        raise SplitError("the connection is missing from the server capture")
    crossings = pair(client, server)
    t_first_ns = t_start_ns + round(ttfb_ms * _NS)
    response = _response(client, t_first_ns)
    end = next((c for c in crossings if c.client_index == response.index), None)
    if end is None:
        raise SplitError(f"the response segment (client capture #{response.index}) is "
                         "not in the server capture")
    steps = chain(crossings, end)
    hops: list[Hop] = []
    network_ns = server_ns = client_hold_ns = 0
    for prev, cur in zip([None, *steps[:-1]], steps, strict=True):
        path = cur.arrive_ns - cur.depart_ns
        held = 0 if prev is None else cur.depart_ns - prev.arrive_ns
        if path < 0:
            raise SplitError(f"negative path time {path / _NS:.3f} ms: the captures disagree")
        network_ns += path
        if cur.direction == "s2c":
            server_ns += held
        else:
            client_hold_ns += held
        hops.append(Hop(cur.direction, held / _NS, path / _NS))
    before_syn = steps[0].depart_ns - t_start_ns
    after_arrival = t_first_ns - end.arrive_ns
    if before_syn < 0 or after_arrival < 0:
        raise SplitError(f"application times and captures disagree (first segment "
                         f"{before_syn / _NS:.3f} ms after start, read "
                         f"{after_arrival / _NS:.3f} ms after arrival)")
    client_ns = before_syn + client_hold_ns + after_arrival
    return TimeSplit(network_ns / _NS, client_ns / _NS, server_ns / _NS, tuple(hops))
