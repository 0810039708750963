"""What several experiments share: one measured point, and round trips counted from pcaps."""

from __future__ import annotations

import itertools
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import middleboxes
from experiments.runner import RunContext
from testbed.apps.priority import ENDPOINT_RT_PRIORITY
from testbed.net.flows import Connection, connections
from testbed.net.network import NetConfig, Network
from testbed.net.pcap import PcapError, Segment, options_of, read_segments
from testbed.net.timesplit import SplitError, empty_record, split
from testbed.workload import Workload, run_workload
from topologies import PathShape, Topology, create

TCP_FIN, TCP_RST = 0x01, 0x04


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """One point: a fresh network, optional middlebox, a warm-up and N captured connections."""

    proto: str
    path: PathShape
    connections: int
    topology: str = "direct"
    middlebox: str | None = None
    policy: str | None = None
    port: int = 5000
    warmup: bool = True
    timeout_s: float = 10.0
    gap_ms: float = 5.0
    eno_datapath: str | None = None  # ENO arms: bpf | nfqueue (None: the run's --eno-datapath)
    # Client and server under SCHED_FIFO below the delay line (testbed/apps/priority.py):
    # the machine's other load does not end up in the endpoints' host time.
    rt_priority: int = ENDPOINT_RT_PRIORITY


def rtt_grid(rtts: Iterable[float], protos: Iterable[str], **axes: Iterable[str]
             ) -> list[dict[str, Any]]:
    """The points of an RTT sweep: per RTT, per protocol, per value of each further axis
    (in the order given), e.g. ``{"proto": "tls", "datapath": "bpf", "rtt_ms": 10}``. The arms
    of one RTT follow each other, so a ``NetworkPool`` can reuse one network for them."""
    names = list(axes)
    return [{"proto": proto, **dict(zip(names, values, strict=True)), "rtt_ms": rtt}
            for rtt, proto, *values in itertools.product(rtts, protos, *axes.values())]


def rtt_measurement(point: dict[str, Any], connections: int, **options: Any) -> Measurement:
    """The measurement of one ``rtt_grid`` point on the direct topology."""
    return Measurement(proto=point["proto"], path=PathShape(rtt_ms=float(point["rtt_ms"])),
                       connections=connections, **options)


class NetworkPool:
    """One open network reused by consecutive points of the same topology, path and
    middlebox model (the arms of one latency RTT, of one fallback middlebox model), each arm
    with its own box installation, server, hooks and client on it. A new key closes the
    previous network; ``close`` ends the last one. Its description, with the delay its links
    applied, goes to networks.jsonl when it closes, tagged with all its points' tags."""

    def __init__(self) -> None:
        self.key: str | None = None
        self.net: Network | None = None
        self.topo: Topology | None = None
        self.tags: list[str] = []

    def get(self, key: str, m: Measurement, ctx: RunContext, tag: str
            ) -> tuple[Network, Topology]:
        if self.net is None or key != self.key:
            self.close(ctx)
            topo = create(m.topology, path=m.path)
            net = Network(topo, NetConfig(link_backend=ctx.link_backend, seed=ctx.seed))
            net.start()
            self.key, self.net, self.topo, self.tags = key, net, topo, []
        assert self.net is not None and self.topo is not None
        self.tags.append(tag)
        return self.net, self.topo

    def close(self, ctx: RunContext) -> None:
        net, self.net = self.net, None
        if net is None:
            return
        net.stop()
        _describe(ctx, ",".join(self.tags), net)


def _describe(ctx: RunContext, tag: str, net: Network) -> dict[str, Any]:
    """What ran (addresses, link shapes, every host's sysctls as read back) into
    networks.jsonl; returns the delay the link backend applied."""
    applied = net.applied_delay()
    with (ctx.run_dir / "networks.jsonl").open("a") as networks:
        networks.write(json.dumps({"tag": tag, **net.describe(), "applied_delay": applied})
                       + "\n")
    return applied


def measure(m: Measurement, ctx: RunContext, tag: str, pool: NetworkPool | None = None
            ) -> list[dict[str, Any]]:
    """Run the point; every record says whether it was the warm-up, the backend and the
    RTT the link backend really applied (sum of the measured one-way medians; None on a
    pooled network, whose delay lines report when it closes)."""
    pcaps = ctx.run_dir / "pcaps"
    pcaps.mkdir(exist_ok=True)
    if pool is not None:
        net, topo = pool.get(f"{m.topology}|{m.path}|{m.middlebox}", m, ctx, tag)
        records, counters = _run_on(net, topo, m, pcaps / f"{tag}.pcap")
        applied_rtt = None
    else:
        topo = create(m.topology, path=m.path)
        with Network(topo, NetConfig(link_backend=ctx.link_backend, seed=ctx.seed)) as net:
            records, counters = _run_on(net, topo, m, pcaps / f"{tag}.pcap")
        applied = _describe(ctx, tag, net)
        one_way = [d.get("median_ms") for link in applied.values() for d in link.values()]
        applied_rtt = sum(one_way) if all(v is not None for v in one_way) else None
    backend, helper = net.backend, net.delay_helper
    out = [{**r, "warmup": m.warmup and r["conn"] == 0} for r in records]
    for record in out:
        record.update(link_backend=backend, delay_helper=helper.name,
                      delay_helper_note=helper.note, applied_rtt_ms=applied_rtt,
                      middlebox_counters=counters, timeout_s=m.timeout_s,
                      shared_network=pool is not None)
    add_time_split(out, backend)
    return out


def _run_on(net: Network, topo: Topology, m: Measurement, pcap: Path
            ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The point's connections on a running network: the records and the box's counters."""
    box = middleboxes.create(m.middlebox) if m.middlebox else None
    # The warm-up is the first connection of the same client and server processes: it
    # fetches the TFO cookie, seeds resumption tickets and takes the processes' first-use
    # costs (imports, first OpenSSL and hook calls), which no later connection pays.
    # Key logs on by default next to each pcap: secrets, for reading the captures.
    work = Workload(proto=m.proto, connections=m.connections + int(m.warmup),
                    gap_ms=m.gap_ms, timeout_s=m.timeout_s, policy=m.policy, keylog=True,
                    eno_datapath=m.eno_datapath, rt_priority=m.rt_priority)
    if box is not None:
        box.install(net, topo.middleboxes[0])
    try:
        records = run_workload(net, work, pcap=pcap, port=m.port)
        counters = box.counters() if box else None
    finally:
        if box is not None:
            box.remove()
    return records, counters


def _load(path: str | None) -> dict[Any, Connection] | str:
    """The connections of a capture, or why there are none."""
    if not path:
        return "no capture"
    try:
        return connections(read_segments(path))
    except (OSError, PcapError) as err:
        return f"capture {Path(path).name} unreadable: {err}"


def add_time_split(records: list[dict[str, Any]], backend: str) -> None:
    """Add the time split of testbed/net/timesplit.py to every record that has captures;
    a record whose split cannot be made gets empty fields and ``split_error``."""
    loaded: dict[str, dict[Any, Connection] | str] = {}
    for record in records:
        if not record.get("pcap"):
            continue
        record.update(split_record(record, backend, loaded))


def split_record(record: dict[str, Any], backend: str,
                 loaded: dict[str, dict[Any, Connection] | str]) -> dict[str, Any]:
    """The split keys of one record (``loaded`` caches the captures by path)."""
    if backend != "userspace":
        # netem delays in the sender's egress qdisc, before the capture sees the packet.
        return empty_record(f"{backend} backend: the delay is applied before the capture")
    for end in ("client", "server"):
        dropped = record.get(f"capture_dropped_{end}")
        if dropped is None:
            return empty_record(f"no {end} capture counters")
        if dropped:
            return empty_record(f"{end} capture dropped {dropped} packets")
    if not record.get("bytes_ok") or record.get("ttfb_ms") is None:
        return empty_record("connection failed")
    sides = []
    for key in ("pcap", "pcap_server"):
        path = record.get(key)
        if str(path) not in loaded:
            loaded[str(path)] = _load(path)
        got = loaded[str(path)]
        if isinstance(got, str):
            return empty_record(got)
        conn = find_connection(got, record)
        if conn is None:
            return empty_record(f"connection not found in the {key} capture")
        sides.append(conn)
    try:
        return split(sides[0], sides[1], t_start_ns=round(record["t_start_wall"] * 1e9),
                     ttfb_ms=float(record["ttfb_ms"])).as_record()
    except SplitError as err:
        return empty_record(str(err))


def is_resumption_arm(proto: str) -> bool:
    return "-resume" in proto or "-0rtt" in proto


def counts_for_arm(record: dict[str, Any]) -> bool:
    """Whether a connection measures its arm: not a warm-up, and for resumption arms only
    connections that did resume (the first connection of such a run is a full handshake
    that seeds the session; the record says ``resumed``)."""
    if record.get("warmup"):
        return False
    return not is_resumption_arm(record["proto"]) or bool(record.get("resumed"))


def find_connection(conns: dict[Any, Connection], record: dict[str, Any]) -> Connection | None:
    """The captured connection of a client record: its local port, SYN nearest its start."""
    port = record.get("local_port")
    candidates = [c for k, c in conns.items() if k.client_port == port]
    if not candidates:
        return None
    return min(candidates, key=lambda c: abs(c.t0 - record["t_start_wall"]))


def _seq_leq(a: int, b: int) -> bool:
    """a <= b in 32-bit sequence space (RFC 793 §3.3 comparisons)."""
    return (b - a) % 2**32 < 2**31


def server_rounds(conn: Connection) -> list[tuple[int, int]]:
    """(segment index, round number) for each server segment that carries something.

    A server segment opens a new round trip only when it acknowledges the first
    segment of the client's latest unanswered flight: the ACK field proves it was
    sent after that flight arrived. Server segments that do not (a 0.5-RTT reply
    leaving just after the ServerHello while the client's Finished is already on
    the way) stay in the round they belong to, even if a client flight shows
    between them in the capture.
    """
    out: list[tuple[int, int]] = []
    rounds = 0
    awaiting: int | None = None  # seq end of the first segment of an unanswered client flight
    for cs in conn.segments:
        s = cs.segment
        if not s.seg_len and not s.is_rst:
            continue  # pure ACKs never make the peer wait
        if cs.direction == "c2s":
            if awaiting is None:
                awaiting = (s.seq + s.seg_len) % 2**32
            continue
        if awaiting is not None and s.is_ack and _seq_leq(awaiting, s.ack):
            rounds += 1
            awaiting = None
        out.append((cs.index, rounds))
    return out


SACK_KIND = 5  # RFC 2018 §3


def duplicate_acks(conn: Connection) -> list[int]:
    """Indices of segments that signal loss or reordering to the peer: any SACK block
    (RFC 2018 §3), or a duplicate ACK as RFC 5681 §2 defines it (no data, no SYN or FIN,
    same ACK number and window as the same side's previous ACK while data is outstanding).

    On a loss-free path either one means a segment overtook an earlier one on the way.
    """
    out: list[int] = []
    last: dict[str, tuple[int, int]] = {}  # direction -> (ack, window) of its previous ACK
    sent_end: dict[str, int] = {}  # direction -> highest sequence end sent so far
    for cs in conn.segments:
        s, side = cs.segment, cs.direction
        other = "s2c" if side == "c2s" else "c2s"
        end = (s.seq + s.seg_len) % 2**32
        if side not in sent_end or not _seq_leq(end, sent_end[side]):
            sent_end[side] = end
        if options_of(s, SACK_KIND):
            out.append(cs.index)
        elif s.is_ack and not s.seg_len and not s.is_rst:
            outstanding = other in sent_end and not _seq_leq(sent_end[other], s.ack)
            if last.get(side) == (s.ack, s.window) and outstanding:
                out.append(cs.index)
        if s.is_ack:
            last[side] = (s.ack, s.window)
    return out


def dsack_only(segment: Segment) -> bool:
    """A segment whose SACK blocks all lie at or below its cumulative ACK: a D-SACK (RFC 2883
    §4) reports a duplicate segment, i.e. a retransmission the sender's timer made (a late
    answer on a loaded host), not a segment that overtook another."""
    return bool(options_of(segment, SACK_KIND)) and not sack_holes(segment)


def overtaking_acks(conn: Connection) -> list[int]:
    """``duplicate_acks`` without the D-SACK reports: on a loss-free link each one means a
    segment overtook an earlier one on the way (a reordering)."""
    return [i for i in duplicate_acks(conn) if not dsack_only(conn.segments[i].segment)]


def _ack_counts(conn: Connection) -> dict[str, int]:
    dups = duplicate_acks(conn)
    return {"dup_acks": len(dups),
            "dsacks": sum(1 for i in dups if dsack_only(conn.segments[i].segment))}


def round_trips(conn: Connection, record: dict[str, Any]) -> dict[str, Any]:
    """Round trips counted from the capture (sequence and ACK numbers, not timing).

    ``rt_send``: server round trips the client had to wait for before the segment
    that carries its first application byte; ``rt_resp``: the round trip in which
    the first response byte arrived. The application's own timestamps only say
    WHICH segment carried the request and the response (encrypted payloads cannot
    be told apart otherwise); the count comes from the segments themselves (see
    ``server_rounds``).
    """
    t_first = record["t_start_wall"] + (record["ttfb_ms"] or 0.0) / 1e3
    request_from = (record.get("phases_ms") or {}).get("request_from")
    if request_from is not None:
        # Taken before the send (or the connect that carried the request): an exact lower
        # bound, 0.2 ms for the offset between the record's wall and monotonic clocks.
        t_from = record["t_start_wall"] + request_from / 1e3 - 0.0002
    else:  # older records: the request leaves within a few ms before send returns
        t_from = record["t_start_wall"] + (record["request_ms"] or 0.0) / 1e3 - 0.002
    request_index = response_index = None
    for cs in conn.segments:
        s = cs.segment
        if not s.payload_len:
            continue
        # The request is the first client payload after t_from; the response arrives before
        # recv returns.
        if cs.direction == "c2s" and request_index is None and s.ts >= t_from:
            request_index = cs.index
        if cs.direction == "s2c" and s.ts <= t_first + 0.0005:
            response_index = cs.index
    if request_index is None or response_index is None:
        return {"rt_send": None, "rt_resp": None, "flights": None, **_ack_counts(conn)}
    rounds = server_rounds(conn)
    flights = conn.flights()
    return {"rt_send": max([r for i, r in rounds if i < request_index], default=0),
            "rt_resp": max([r for i, r in rounds if i <= response_index], default=0),
            "flights": "".join("C" if f.direction == "c2s" else "S" for f in flights),
            **_ack_counts(conn)}


def sack_holes(segment: Segment) -> int:
    """SACK blocks (RFC 2018) above the segment's cumulative ACK: data that arrived out of
    order. A D-SACK (at or below the ACK) reports a duplicate, not a reordering."""
    holes = 0
    for data in options_of(segment, SACK_KIND):
        edges = struct.unpack(f"!{len(data) // 4}I", data[: len(data) // 4 * 4])
        holes += sum(1 for right in edges[1::2] if 0 < (right - segment.ack) % 2**32 < 2**31)
    return holes


def reordered(conn: Connection) -> int:
    """Segments with a SACK hole before the first FIN or RST (handshakes and the exchange):
    on a loss-free link, each one is a segment some box let overtake another."""
    count = 0
    for cs in conn.segments:
        if cs.segment.flags & (TCP_FIN | TCP_RST):
            break
        count += bool(sack_holes(cs.segment))
    return count


def count_from_pcaps(records: list[dict[str, Any]], run_dir: Path) -> list[dict[str, Any]]:
    """Round trips for every non-warm-up record, reading each pcap once."""
    by_pcap: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if counts_for_arm(record) and record.get("pcap") and record.get("bytes_ok"):
            by_pcap.setdefault(Path(record["pcap"]).name, []).append(record)
    out = []
    for name, recs in by_pcap.items():
        conns = connections(read_segments(run_dir / "pcaps" / name))
        for record in recs:
            conn = find_connection(conns, record)
            counted = round_trips(conn, record) if conn else {"rt_send": None, "rt_resp": None,
                                                               "flights": None, "dup_acks": None,
                                                               "dsacks": None}
            out.append({"proto": record["proto"], "conn": record["conn"],
                        "eno_datapath": record.get("eno_datapath"),
                        "reordered": reordered(conn) if conn else None, **counted})
    return out


def pooled_applied_rtt(run_dir: Path) -> dict[str, float]:
    """Point tag -> the RTT the link backend applied, from networks.jsonl (a pooled network
    reports once for all its points, when it closes)."""
    path = run_dir / "networks.jsonl"
    out: dict[str, float] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        one_way = [d.get("median_ms") for link in entry.get("applied_delay", {}).values()
                   for d in link.values()]
        if one_way and all(v is not None for v in one_way):
            for tag in str(entry.get("tag", "")).split(","):
                out[tag] = float(sum(one_way))
    return out
