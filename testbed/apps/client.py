"""Request/response client run inside a host: `python -m testbed.apps.client`.

Opens N connections (sequentially, or ``--concurrency`` at a time), sends one
request on each and reads the response, printing one JSON object per
connection. Times are milliseconds from ``connect start`` (just before the SYN
is asked for): connected, request sent, first response byte, done.

A connection is closed beside the next one (``Closer``): a TEP's graceful close sends its end
of stream and FIN at once, then reads the server's end of stream, a round trip later, before
it lets go of the socket (testbed/streamio.py, ``close``). Waiting for that would put one
round trip between every two connections of an encrypted arm and none of plain TCP's, for
nothing the next connection uses; the wire sees the same segments either way. A close the
next connection does depend on (after accepted 0-RTT the server's single-use ticket follows
the client's Finished, testbed/apps/proto_tls_arm.py) is waited for: the connection says so
with ``close_before_next``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from testbed import keylog
from testbed.apps.priority import raise_priority
from testbed.apps.transport import get_transport
from testbed.apps.wire import REQUEST, encode_request, pattern
from testbed.stream import StreamError


def _ms(t: float | None, start: float) -> float | None:
    return None if t is None else round((t - start) * 1e3, 4)


def eno_keys(info: Any, policy: str | None) -> dict[str, Any]:
    """ENO protocols: the ENO result, the TEP's label, the role and the policy."""
    if info is None:
        return {"eno": None, "tep_label": None, "role": None,
                "policy": policy or "opportunistic"}
    return {"eno": info.eno, "tep_label": info.tep_label, "role": info.role,
            "policy": info.policy}


@dataclass
class _Exchange:
    """What one request/response exchange measured (perf_counter times)."""

    start: float
    t_from: float | None = None
    t_sent: float | None = None
    t_first: float | None = None
    t_done: float | None = None
    received: int = 0
    ok: bool = True


def _exchange(conn: Any, args: argparse.Namespace, index: int, request: bytes, already: int,
              ex: _Exchange) -> None:
    """Send the rest of the request and read the response, timing each step."""
    # A lower bound on when the request segment left (the pcap analysis finds it as the
    # first client payload after this moment): taken before the send, so load can only
    # make it earlier, never later than the segment. A request that rode connect (TFO,
    # 0-RTT) left after ``start``, or after the moment the transport names (a TLS request
    # behind the client's Finished: once the server's first flight was read).
    ex.t_from = (conn.info.phases.get("request_from", ex.start) if already
                 else time.perf_counter())
    if already < len(request):
        conn.sendall(request[already:])
    ex.t_sent = time.perf_counter()
    while ex.received < args.response_size:
        chunk = conn.recv(min(1 << 16, args.response_size - ex.received))
        if not chunk:
            break
        if ex.t_first is None:
            ex.t_first = time.perf_counter()
        ex.ok = ex.ok and chunk == pattern(index, len(chunk), ex.received)
        ex.received += len(chunk)
    ex.t_done = time.perf_counter()


class Closer:
    """Closes a connection with a TEP on a thread of its own unless its ``close_before_next``
    says the next connection needs the close done (module docstring); any other close
    returns at once anyway. ``join`` waits for every close started."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def close(self, conn: Any) -> None:
        stream = getattr(conn, "stream", None)
        waits = stream is not None and stream.tep_driver is not None
        if not waits or getattr(conn, "close_before_next", False):
            conn.close()
            return
        thread = threading.Thread(target=conn.close, name="close", daemon=True)
        thread.start()
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)

    def join(self) -> None:
        with self._lock:
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join()


ANCHOR_TRIES = 5
ANCHOR_TIGHT_S = 50e-6


def clock_anchor() -> tuple[float, float]:
    """(perf_counter, wall clock) read at one instant, to place the connection's monotonic
    timestamps on the captures' wall clock. The wall clock is read between two perf_counter
    reads; a preemption in between would shift every timestamp of the record against the pcap
    (and the pcap analysis would miss the request or response it looks for), so the pair with
    the tightest bracket of a few tries is kept, the wall time at its midpoint."""
    best = (float("inf"), 0.0, 0.0)  # (bracket, perf_counter, wall at that perf_counter)
    for _ in range(ANCHOR_TRIES):
        before = time.perf_counter()
        wall = time.time()
        after = time.perf_counter()
        if after - before < best[0]:
            best = (after - before, after, wall + (after - before) / 2)
        if after - before <= ANCHOR_TIGHT_S:
            break
    return best[1], best[2]


def one_connection(args: argparse.Namespace, index: int, closer: Closer) -> dict[str, Any]:
    transport = get_transport(args.proto, args.policy)
    request = encode_request(index, args.response_size, args.request_size)
    record: dict[str, Any] = {"conn": index, "proto": args.proto, "error": None}
    start, t_wall = clock_anchor()
    ex = _Exchange(start=start)
    conn = None
    try:
        try:
            conn, already = transport.connect((args.server, args.port), args.timeout, request)
            record["local_port"] = conn.local_port
            _exchange(conn, args, index, request, already, ex)
        except (OSError, TimeoutError, StreamError) as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
            # A connection refused by policy says why, and which port it used (server records).
            record["fallback_reason"] = getattr(exc, "reason", None)
            if isinstance(exc, StreamError) and exc.local_port:
                record["local_port"] = exc.local_port
        record["t_start_wall"] = t_wall
        _complete_record(record, args, transport.uses_eno,
                         conn.info if conn is not None else None, ex)
    finally:
        if conn is not None:
            closer.close(conn)
        keylog.flush()  # after the connection's timed part (testbed/keylog.py, defer)
    return record


def _complete_record(record: dict[str, Any], args: argparse.Namespace, uses_eno: bool,
                     info: Any, ex: _Exchange) -> None:
    """The connection's record from what the exchange measured and what the stream says."""
    start, received = ex.start, ex.received
    phases = dict(info.phases) if info else {}
    if ex.t_from is not None:
        phases["request_from"] = ex.t_from
    # A transport that sent the request inside connect (TLS 0-RTT) says when it left.
    t_sent = phases.get("request_sent", ex.t_sent)
    complete = received == args.response_size and record["error"] is None
    record.update(
        outcome=(info.outcome if info and complete else "failed"),
        tep=info.tep if info else None,
        fallback_reason=info.fallback_reason if info else record.get("fallback_reason"),
        session_id=info.session_id if info else None,
        session_id_peer=info.session_id_peer if info else None,
        connect_ms=_ms(phases.get("connected"), start),
        request_ms=_ms(t_sent, start),
        ttfb_ms=_ms(ex.t_first, start),
        total_ms=_ms(ex.t_done, start),
        bytes_expected=args.response_size,
        bytes_received=received,
        bytes_ok=bool(complete and ex.ok),
        delivered_ok=ex.ok,  # every byte the application got was right, also if it failed later
        phases_ms={k: _ms(v, start) for k, v in phases.items()},
        sched_policy=getattr(args, "sched_policy", None),
    )
    if uses_eno:
        record.update(eno_keys(info, args.policy))
    if info is not None:
        record.update(info.extras)
    if record["error"] is None and not complete:
        record["error"] = f"short response: {received} of {args.response_size} bytes"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", required=True)
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--proto", default="plain")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--request-size", type=int, default=REQUEST.size)
    parser.add_argument("--response-size", type=int, default=1024)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--gap-ms", type=float, default=0.0, help="pause between connections")
    parser.add_argument("--policy", default=None, help="ENO protocols: off|opportunistic|required")
    parser.add_argument("--rt-priority", type=int, default=0,
                        help="run under SCHED_FIFO at this priority (testbed/apps/priority.py)")
    args = parser.parse_args(argv)
    if args.connections < 1 or args.concurrency < 1 or args.request_size < REQUEST.size:
        parser.error("connections and concurrency must be >= 1, request size >= header")
    if not 0 <= args.rt_priority <= 99:
        parser.error("--rt-priority must be 0 (off) .. 99")
    get_transport(args.proto, args.policy)
    args.sched_policy = raise_priority(args.rt_priority)  # before any connection thread
    keylog.defer()
    lock = threading.Lock()

    def emit(record: dict[str, Any]) -> None:
        with lock:
            print(json.dumps(record), flush=True)

    closer = Closer()
    if args.concurrency == 1:
        for i in range(args.connections):
            emit(one_connection(args, i, closer))
            if args.gap_ms:
                time.sleep(args.gap_ms / 1e3)
    else:
        with ThreadPoolExecutor(args.concurrency) as pool:
            for record in pool.map(lambda i: one_connection(args, i, closer),
                                   range(args.connections)):
                emit(record)
    closer.join()  # every connection closed gracefully before the process ends
    return 0


if __name__ == "__main__":
    sys.exit(main())
