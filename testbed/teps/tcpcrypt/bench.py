"""In-memory tcpcrypt benchmarks: handshake rate, per-side CPU cost, framing throughput.

Every function returns a dict and prints nothing. CPU time is ``time.process_time`` taken
around each side's own calls only, so the client (role A) and server (role B) figures are
separate; wall-clock rates use ``time.perf_counter``. Nothing here touches a socket.
"""

from __future__ import annotations

import time
from typing import Any

from testbed.teps.base import Role, TepContext
from testbed.teps.benchflights import flight_medians, idle

from .constants import AEADS, MAX_CHUNK, TEPS, AeadId, TepId
from .core import TcpcryptCore
from .loopback import DeterministicRandom, connect
from .options import OPT_CACHE, OPT_CHUNK_SIZE, OPT_CIPHERS, OPT_PEER, local_suboption_data
from .resumption import ResumptionCache

_TRANSCRIPT = bytes.fromhex("450422") + bytes.fromhex("450322")  # a plausible ENO transcript


Steps = tuple[list[float], list[float], float]  # client, server CPU s per flight; s slept


def _fresh_once(tep_id: int, aead_id: int, seed: int, idle_s: float = 0.0) -> Steps:
    """One fresh handshake: each side's CPU per flight, and the wall seconds slept. Each of
    its three flights (Init1; Init2 from Init1; the client's keys from Init2) follows
    ``idle_s`` of sleep."""
    rand_a = DeterministicRandom(f"bench-a-{seed}")
    rand_b = DeterministicRandom(f"bench-b-{seed}")
    options = {OPT_CIPHERS: (aead_id,)}
    slept = idle(idle_s)
    t0 = time.process_time()
    a = TcpcryptCore(TepContext(Role.A, _TRANSCRIPT, rand_a, options=dict(options)), tep_id)
    a.start(0.0)
    init1 = a.data_to_send()
    t1 = time.process_time()
    slept += idle(idle_s)
    t1b = time.process_time()
    b = TcpcryptCore(TepContext(Role.B, _TRANSCRIPT, rand_b, options=dict(options)), tep_id)
    b.start(0.0)
    b.receive_data(init1, 0.0)
    init2 = b.data_to_send()
    t2 = time.process_time()
    slept += idle(idle_s)
    t2b = time.process_time()
    a.receive_data(init2, 0.0)
    t3 = time.process_time()
    if a.session_id is None or a.session_id != b.session_id:
        raise RuntimeError("benchmark handshake did not agree on a session ID")
    return [t1 - t0, t3 - t2b], [t2 - t1b], slept


def _resumed_once(tep_id: int, caches: tuple[ResumptionCache, ResumptionCache], seed: int,
                  idle_s: float = 0.0) -> Steps:
    """One resumed handshake (§3.5) from the caches' current entries; each of its three steps
    (the SYN's suboption, the server's answer and keys, the client's keys) follows
    ``idle_s`` of sleep."""
    rand_a = DeterministicRandom(f"bench-ra-{seed}")
    rand_b = DeterministicRandom(f"bench-rb-{seed}")
    opts_a: dict[str, Any] = {OPT_CACHE: caches[0], OPT_PEER: "server"}
    opts_b: dict[str, Any] = {OPT_CACHE: caches[1], OPT_PEER: "client"}
    slept = idle(idle_s)
    t0 = time.process_time()
    syn = local_suboption_data(opts_a, tep_id, rand_a, 0.0)
    t1 = time.process_time()
    slept += idle(idle_s)
    t1b = time.process_time()
    synack = local_suboption_data(opts_b, tep_id, rand_b, 0.0, peer_data=syn)
    b = TcpcryptCore(TepContext(Role.B, _TRANSCRIPT, rand_b, 0.0, syn, opts_b), tep_id)
    b.start(0.0)
    t2 = time.process_time()
    slept += idle(idle_s)
    t2b = time.process_time()
    a = TcpcryptCore(TepContext(Role.A, _TRANSCRIPT, rand_a, 0.0, synack, opts_a), tep_id)
    a.start(0.0)
    t3 = time.process_time()
    if not (a.resumed and b.resumed and a.session_id == b.session_id):
        raise RuntimeError("benchmark resumption did not resume")
    return [t1 - t0, t3 - t2b], [t2 - t1b], slept


def bench_handshakes(
    tep_id: int = TepId.X25519,
    aead_id: int = AeadId.AES_128_GCM,
    count: int = 200,
    resumed: bool = False,
    idle_s: float = 0.0,
) -> dict[str, Any]:
    """Handshakes per second, CPU seconds per handshake for each side and the median of each
    side's flights in order (client: Init1 or the SYN's resumption suboption, then its keys;
    server: its answer and keys). ``idle_s``: every flight sleeps that long first (untimed,
    left out of the wall time), as an endpoint waits about one RTT between flights: the cold
    CPU `tcpinc bench endpoints` shows."""
    if count < 1:
        raise ValueError("count must be >= 1")
    if idle_s < 0:
        raise ValueError("idle_s must be >= 0")
    caches = (ResumptionCache(), ResumptionCache())
    if resumed:  # one fresh session seeds both caches with ss[1]
        connect(tep_id, options_a={OPT_CACHE: caches[0], OPT_PEER: "server",
                                   OPT_CIPHERS: (aead_id,)},
                options_b={OPT_CACHE: caches[1], OPT_PEER: "client"}).pump()
    flights: tuple[list[list[float]], list[list[float]]] = ([], [])
    slept = 0.0
    start = time.perf_counter()
    for i in range(count):
        if resumed:
            c, s, z = _resumed_once(tep_id, caches, i, idle_s)
        else:
            c, s, z = _fresh_once(tep_id, aead_id, i, idle_s)
        flights[0].append(c)
        flights[1].append(s)
        slept += z
    wall = time.perf_counter() - start - slept
    client = sum(map(sum, flights[0]))
    server = sum(map(sum, flights[1]))
    return {
        "tep": TEPS[tep_id].name,
        "aead": AeadId(aead_id).name,
        "resumed": resumed,
        "handshakes": count,
        "idle_s": idle_s,
        "wall_s": wall,
        "handshakes_per_s": count / wall if wall > 0 else float("inf"),
        "client_cpu_s_per_handshake": client / count,
        "server_cpu_s_per_handshake": server / count,
        "client_cpu_s_per_flight": flight_medians(flights[0]),
        "server_cpu_s_per_flight": flight_medians(flights[1]),
    }


def bench_framing(
    aead_id: int = AeadId.AES_128_GCM,
    chunk_size: int = 16384,
    total_bytes: int = 16 * 1024 * 1024,
    tep_id: int = TepId.X25519,
) -> dict[str, Any]:
    """MB/s (10^6 bytes) of application data sealed by one core and opened by the other."""
    if not 1 <= chunk_size <= MAX_CHUNK or total_bytes < chunk_size:
        raise ValueError("need 1 <= chunk_size <= 65518 and total_bytes >= chunk_size")
    pair = connect(tep_id, options_a={OPT_CIPHERS: (aead_id,), OPT_CHUNK_SIZE: chunk_size})
    pair.pump()
    payload = bytes(chunk_size)
    frames = total_bytes // chunk_size
    seal = open_ = 0.0
    received = 0
    for _ in range(frames):
        t0 = time.perf_counter()
        pair.a.send_data(payload)
        wire = pair.a.data_to_send()
        t1 = time.perf_counter()
        events = pair.b.receive_data(wire, 0.0)
        t2 = time.perf_counter()
        seal += t1 - t0
        open_ += t2 - t1
        received += sum(len(getattr(e, "data", b"")) for e in events)
    sent = frames * chunk_size
    if received != sent:
        raise RuntimeError(f"framing benchmark lost data: {received} of {sent} bytes")
    return {
        "aead": AeadId(aead_id).name,
        "chunk_size": chunk_size,
        "bytes": sent,
        "seal_mb_per_s": sent / seal / 1e6 if seal > 0 else float("inf"),
        "open_mb_per_s": sent / open_ / 1e6 if open_ > 0 else float("inf"),
        "overhead_bytes_per_frame": len(wire) - chunk_size,
    }


def bench_all(handshakes: int = 100, framing_bytes: int = 8 * 1024 * 1024) -> dict[str, Any]:
    """Every TEP (fresh and resumed, AES-128-GCM) and every AEAD's framing throughput."""
    return {
        "handshakes": [
            bench_handshakes(tep, AeadId.AES_128_GCM, handshakes, resumed)
            for tep in sorted(TEPS)
            for resumed in (False, True)
        ],
        "framing": [bench_framing(aead, total_bytes=framing_bytes) for aead in sorted(AEADS)],
    }
