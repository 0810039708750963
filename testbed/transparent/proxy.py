"""The per-host transparent TEP proxy: `python -m testbed.transparent.proxy ...`.

Unmodified applications (iperf3, curl, an ordinary HTTP server) get TCP-ENO and a TEP
without knowing: netfilter in the host's namespace (rules.py) diverts

* the host's outgoing TCP connections to the ``redirect`` listener (nat OUTPUT REDIRECT); the
  application's destination is read back with SO_ORIGINAL_DST and the proxy opens a stream
  to it (testbed/stream.py ``connect``: ENO, the TEP, the policy's fallback);
* incoming connections to the ``--listen-ports`` to the ``tproxy`` listener (nft tproxy in
  prerouting, after the ENO hook's mangle chain, so the hook sees the SYN with its real port
  and the proxy's registration for that port answers it); the accepted socket keeps the
  original addresses, the proxy takes the hook's result (``establish``) and connects to the
  application on the same address over loopback.

ENO runs on the host's datapath (host.py chooses it like any run, ``--eno-datapath``): on
``bpf`` the proxy runs in the host's program cgroup, its outgoing streams carry their offer in
the socket's storage and the listen ports go into the program's listen map (the SYN of a
diverted connection still names the application's port, and so does the request socket the
program answers for), so no segment of a connection through the proxies waits in userspace;
on ``nfqueue`` the hook judges the segments and the proxy asks it for the results.

The proxy's own sockets carry its group id (``--gid``, set at start), which the rules
exclude from diversion. Establishment with ENO (blocking: hook queries, the TEP handshake)
runs in a pool of worker threads; where nothing is negotiated the event loop opens the other
leg itself (dial.py); the relaying of every established pair is the same selectors loop
(relay.py). The process runs at real-time priority where permitted (options.set_realtime).
Policy as for any stream: ``opportunistic`` relays in plain TCP end to end after a fallback,
``required`` resets the application's connection (refused before one byte left), ``off``
relays plain TCP (the proxy's own cost, for comparison).

Each connection is one JSON line in ``--records`` when it ends (or fails): both 4-tuples,
outcome, TEP, session ID, fallback reason, times and byte counts. The session-ID query
(queries.py; control.py asks) answers from the same table.

Contract with ``Network.start_helper`` (the helper skeleton, testbed/helperproc.py): prints
``ready`` once both listeners and the query socket listen and the datapath knows the listen
ports;
SIGTERM resets the remaining pairs, writes their records and exits 0.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import logging
import os
import queue
import selectors
import socket
import struct
import sys
import threading
import time
from typing import Any

from testbed import helperproc
from testbed.eno.bpf import datapath
from testbed.eno.control import HookClient, HookUnavailableError, Result, Settings
from testbed.stream import (
    EncryptionRequiredError,
    Policy,
    Stream,
    StreamConfig,
    StreamError,
    StreamInfo,
    connect,
    establish,
    reset,
    wrap_bpf,
)
from testbed.transparent import control, queries
from testbed.transparent.dial import Dial
from testbed.transparent.options import parse_args, set_realtime, stream_configs
from testbed.transparent.relay import Pair, Relay, keep_buffers_in_heap

logger = logging.getLogger("tcpinc.transparent")

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h, level SOL_IP
IP_TRANSPARENT = 19  # linux/in.h
Addr = tuple[str, int]


def original_dst(sock: socket.socket) -> Addr:
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), port


def _addr(pair: Any) -> str:
    return f"{pair[0]}:{pair[1]}"


def _phase(record: dict[str, Any], name: str, at: float | None = None) -> None:
    """Note in the record when a step of the connection's set-up happened: ``phases_ms``,
    milliseconds since the proxy accepted it (perf_counter, as ``StreamInfo.phases``)."""
    moment = time.perf_counter() if at is None else at
    record.setdefault("phases_ms", {})[name] = round((moment - record["t0"]) * 1e3, 3)


class Proxy:
    """Listeners, worker pool, relay and the session table of one host."""

    def __init__(self, args: argparse.Namespace, out_config: StreamConfig,
                 in_config: StreamConfig) -> None:
        self.args = args
        self.out_config, self.in_config = out_config, in_config
        self.relay = Relay(self._ended)
        # Worker threads start under SCHED_OTHER (SCHED_RESET_ON_FORK applies to threads
        # too): each takes the loop's priority itself, or every handshake step of a new
        # connection would wait in the run queue behind ordinary processes while the loop,
        # at real-time priority, waits for it (options.set_realtime).
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=args.workers, initializer=set_realtime, initargs=(args.rt_priority,))
        self.ready: queue.SimpleQueue[tuple[socket.socket, Stream, dict[str, Any]]] = (
            queue.SimpleQueue())
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.lock = threading.Lock()
        self.open = 0  # accepted connections whose record is not written yet
        self.idle = threading.Condition(self.lock)
        self.sessions: dict[str, dict[str, Any]] = {}
        self.records = open(args.records, "a") if args.records else None  # noqa: SIM115
        self.registrations: list[HookClient] = []
        # The bpf datapath where this process runs in a host's program cgroup (host.py):
        # the listen ports go into the program's map, results come from the kernel's record.
        self.bpf_host = datapath.current()
        self.bpf: tuple[datapath.BpfHost, Settings] | None = None
        # What the records say: None where neither side negotiates ENO (policy off, plain).
        eno = any(c.policy is not Policy.OFF for c in (out_config, in_config))
        self.datapath = None if not eno else "bpf" if self.bpf_host is not None else "nfqueue"
        self.listeners: list[socket.socket] = []
        self.dials: set[Dial] = set()
        self._local = threading.local()

    # -- set-up ---------------------------------------------------------------------------

    def listen(self) -> None:
        out = self._listener(self.args.redirect_port, transparent=False)
        self.relay.selector.register(out, selectors.EVENT_READ, "out")
        if self.args.listen_ports:
            incoming = self._listener(self.args.tproxy_port, transparent=True)
            self.relay.selector.register(incoming, selectors.EVENT_READ, "in")
            self._register_ports()
        self.relay.selector.register(self.wake_r, selectors.EVENT_READ, "wake")

    def _listener(self, port: int, *, transparent: bool) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if transparent:  # nft tproxy hands over only to transparent listeners
            sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        sock.bind(("0.0.0.0", port))
        sock.listen(1024)
        sock.setblocking(False)
        self.listeners.append(sock)
        return sock

    def _register_ports(self) -> None:
        """Tell the datapath which ports the proxy answers for (before any SYN can arrive):
        the bpf program's listen map, or the hook. The SYN of a diverted connection still
        carries the application's port, which is what either one keys on."""
        if self.in_config.policy is Policy.OFF:
            return
        settings = self.in_config.settings(active=False, peer=None)
        if self.bpf_host is not None:
            try:
                for port in self.args.listen_ports:
                    self.bpf_host.listen(port, settings)
            except datapath.BpfDatapathError as exc:
                raise StreamError(f"bpf ENO datapath: {exc}") from None
            self.bpf = (self.bpf_host, settings)
            return
        try:
            for port in self.args.listen_ports:
                client = HookClient(self.in_config.hook_name)
                client.listen(port, settings)
                self.registrations.append(client)
        except HookUnavailableError as exc:
            if self.in_config.policy is Policy.REQUIRED:
                raise
            logger.warning("no ENO hook (%s): incoming connections stay plain", exc)
            self.registrations.clear()

    # -- loop -----------------------------------------------------------------------------

    def serve(self) -> None:
        while True:
            wait = self.relay.timeout(1.0 if self.dials else None)
            for key, mask in self.relay.selector.select(timeout=wait):
                if isinstance(key.data, Dial):
                    self._dialed(key.data, key.data.result())
                elif key.data == "wake":
                    self._drain_ready()
                elif key.data in ("out", "in"):
                    self._accept(key.fileobj, key.data)  # type: ignore[arg-type]
                else:
                    self.relay.handle(key, mask)
            self.relay.sweep()
            if self.dials:
                now = time.monotonic()
                for dial in [d for d in self.dials if d.deadline < now]:
                    self._dialed(dial, dial.expired())

    def _accept(self, listener: socket.socket, direction: str) -> None:
        for _ in range(64):
            try:
                sock, peer = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # e.g. the client reset before accept
                logger.info("accept failed: %s", exc)
                continue
            record = {"direction": direction, "t_accept": time.time(),
                      "t0": time.perf_counter(), "sched": self.args.sched,
                      "eno_datapath": self.datapath}
            with self.lock:
                self.open += 1
            if direction == "out" and self.out_config.policy is Policy.OFF:
                self._dial_out(sock, peer, record)
            elif direction == "in" and self._plain_in:
                self._dial_in(sock, peer, record)
            else:  # ENO and a TEP handshake: blocking steps, in a worker
                job = self._open_out if direction == "out" else self._open_in
                self.pool.submit(self._establish, job, sock, peer, record)

    def _establish(self, job: Any, sock: socket.socket, peer: Addr,
                   record: dict[str, Any]) -> None:
        _phase(record, "worker")
        try:
            result = job(sock, peer, record)
        except Exception as exc:  # noqa: BLE001 - any failure refuses this connection only
            logger.exception("establishing failed")
            record.update(outcome="failed", error=f"{type(exc).__name__}: {exc}")
            reset(sock)
            result = None
        if result is None:
            self._ended_record(record)
            return
        self.ready.put(result)
        self.wake_w.send(b"x")

    def _drain_ready(self) -> None:
        with contextlib.suppress(BlockingIOError):  # another wake-up already drained it
            self.wake_r.recv(4096)
        while not self.ready.empty():
            app, stream, record = self.ready.get()
            _phase(record, "relaying")
            pair = Pair.create(app, stream, record)
            self.relay.add(pair)

    # -- establishing in the loop (dial.py) --------------------------------------------------

    @property
    def _plain_in(self) -> bool:
        """Incoming connections stay plain TCP, so there is nothing to wait for."""
        policy = self.in_config.policy
        return policy is Policy.OFF or (policy is Policy.OPPORTUNISTIC
                                        and not self.registrations and self.bpf is None)

    def _dial_out(self, app: socket.socket, peer: Addr, record: dict[str, Any]) -> None:
        try:
            target = original_dst(app)
            record.update(app_local=_addr(peer), app_remote=_addr(target))
            if target == app.getsockname():
                raise ConnectionRefusedError("connection to the proxy itself")
            self._dial(app, target, record)
        except OSError as exc:
            self._failed(app, record, exc)

    def _dial_in(self, sock: socket.socket, peer: Addr, record: dict[str, Any]) -> None:
        try:
            local = sock.getsockname()
            record.update(net_local=_addr(local), net_remote=_addr(peer))
            self._dial(sock, local, record)  # the application, on its own address
        except OSError as exc:
            self._failed(sock, record, exc, "application: ")

    def _dial(self, held: socket.socket, target: Addr, record: dict[str, Any]) -> None:
        dial = Dial.start(held, target, record, time.monotonic() + self.args.timeout)
        self.dials.add(dial)
        self.relay.selector.register(dial.sock, selectors.EVENT_WRITE, dial)

    def _dialed(self, dial: Dial, error: OSError | None) -> None:
        self.dials.discard(dial)
        self.relay.selector.unregister(dial.sock)
        outgoing = dial.record["direction"] == "out"
        if error is not None:
            dial.sock.close()
            self._failed(dial.held, dial.record, error, "" if outgoing else "application: ")
            return
        config = self.out_config if outgoing else self.in_config
        info = StreamInfo(policy=config.policy.value, fallback_reason=(
            "disabled_by_config" if config.policy is Policy.OFF else "hook_unavailable"))
        info.phases["tcp_connected"] = time.perf_counter()
        try:
            if outgoing:  # the stream is the leg just opened
                app, stream = dial.held, Stream(dial.sock, info)
                self._note(dial.record, stream, dial.sock.getsockname(), dial.target)
            else:  # the stream is the accepted connection
                app, stream = dial.sock, Stream(dial.held, info)
                dial.record.update(app_local=_addr(app.getpeername()),
                                   app_remote=_addr(app.getsockname()))
                self._note(dial.record, stream, dial.target, dial.held.getpeername())
        except OSError as exc:  # e.g. the peer reset in between: getpeername fails
            reset(dial.sock)
            self._failed(dial.held, dial.record, exc)
            return
        _phase(dial.record, "relaying")
        self.relay.add(Pair.create(app, stream, dial.record))

    def _failed(self, sock: socket.socket, record: dict[str, Any], exc: OSError,
                prefix: str = "") -> None:
        """Refused, reset or timed out: the held connection is reset, never left hanging."""
        record.update(outcome="failed", error=f"{prefix}{type(exc).__name__}: {exc}")
        reset(sock)
        self._ended_record(record)

    # -- establishing ---------------------------------------------------------------------

    def _open_out(self, app: socket.socket, peer: Addr,
                  record: dict[str, Any]) -> tuple[socket.socket, Stream, dict[str, Any]] | None:
        """An application's outgoing connection: a stream to where it wanted to go."""
        target = original_dst(app)
        record.update(app_local=_addr(peer), app_remote=_addr(target))
        if target == app.getsockname():  # connected to the proxy's own port
            record.update(outcome="failed", error="connection to the proxy itself")
            reset(app)
            return None
        try:
            stream = connect(target, self.out_config, timeout=self.args.timeout)
        except (OSError, StreamError) as exc:
            # Refused, reset, timed out, or required and not encrypted: the application's
            # connection is refused with a reset, never left hanging.
            record.update(outcome="failed", error=f"{type(exc).__name__}: {exc}",
                          fallback_reason=getattr(exc, "reason", None))
            reset(app)
            return None
        self._note(record, stream, stream.sock.getsockname(), stream.sock.getpeername())
        return app, stream, record

    def _open_in(self, sock: socket.socket, peer: Addr,
                 record: dict[str, Any]) -> tuple[socket.socket, Stream, dict[str, Any]] | None:
        """An incoming connection to a listen port: ENO result, TEP, then the application."""
        local = sock.getsockname()
        sock.settimeout(self.args.timeout)
        try:
            stream = self._wrap(sock, local, peer)
        except (OSError, StreamError) as exc:
            record.update(outcome="failed", error=f"{type(exc).__name__}: {exc}",
                          net_local=_addr(local), net_remote=_addr(peer),
                          fallback_reason=getattr(exc, "reason", None))
            reset(sock)
            return None
        try:
            app = socket.create_connection(local, timeout=self.args.timeout)
        except OSError as exc:  # nothing listens: the peer application sees a reset
            record.update(outcome="failed", error=f"application: {type(exc).__name__}: {exc}")
            stream.abort()
            return None
        record.update(app_local=_addr(app.getpeername()), app_remote=_addr(app.getsockname()))
        self._note(record, stream, local, peer)
        return app, stream, record

    def _wrap(self, sock: socket.socket, local: Addr, peer: Addr) -> Stream:
        config = self.in_config
        info = StreamInfo(policy=config.policy.value)
        info.phases["tcp_connected"] = time.perf_counter()
        if self.bpf is not None:
            return wrap_bpf(self.bpf, sock, peer, config, info)
        if not self.registrations:
            if config.policy is Policy.REQUIRED:
                raise EncryptionRequiredError("hook_unavailable")
            info.fallback_reason = ("disabled_by_config" if config.policy is Policy.OFF
                                    else "hook_unavailable")
            return Stream(sock, info)
        result = self._result(local, peer, config.eno_wait)

        def peer_enabled() -> bool:
            again = self._result(local, peer, 0.0)
            return bool(again and again.peer_eno_after_fallback)

        return establish(sock, result, config, info, active=False, split_check=peer_enabled)

    def _result(self, local: Addr, remote: Addr, wait: float) -> Result | None:
        client: HookClient | None = getattr(self._local, "hook", None)
        try:
            if client is None:
                client = self._local.hook = HookClient(self.in_config.hook_name)
            return client.result(local, remote, wait=wait)
        except HookUnavailableError:
            self._local.hook = None
            return None

    def _note(self, record: dict[str, Any], stream: Stream, local: Addr, remote: Addr) -> None:
        info = stream.info
        record.update(
            net_local=_addr(local), net_remote=_addr(remote),
            outcome="encrypted" if info.encrypted else "plaintext", tep=info.tep,
            session_id=info.session_id.hex() if info.session_id else None,
            fallback_reason=info.fallback_reason, role=info.role, policy=info.policy,
            established_ms=(time.perf_counter() - record["t0"]) * 1e3,
        )
        for name, at in info.phases.items():  # the stream's own steps (ENO, TEP handshake)
            _phase(record, name, at)
        with self.lock:
            self.sessions[control.key(local, remote)] = record
            app_local, app_remote = record["app_local"], record["app_remote"]
            self.sessions[f"{app_local}>{app_remote}"] = record
            if len(self.sessions) > 20000:  # keep the newest half of what ended
                for old in list(self.sessions)[:10000]:
                    del self.sessions[old]

    # -- ending ---------------------------------------------------------------------------

    def _ended(self, pair: Pair) -> None:
        self._ended_record(pair.record)

    def _ended_record(self, record: dict[str, Any]) -> None:
        """Every accepted connection ends here exactly once (relayed, failed or refused)."""
        with self.lock:
            if self.records is not None:
                out = {k: v for k, v in record.items() if k != "t0"}
                self.records.write(json.dumps(out) + "\n")
                self.records.flush()
            self.open -= 1
            if self.open == 0:
                self.idle.notify_all()

    def close(self) -> None:
        for dial in list(self.dials):
            self._dialed(dial, ConnectionAbortedError("proxy stopped"))
        self.relay.shutdown()
        self.pool.shutdown(wait=False, cancel_futures=True)
        for client in self.registrations:
            client.close()
        if self.bpf is not None:
            for port in self.args.listen_ports:
                self.bpf[0].unlisten(port)
            self.bpf = None
        for sock in self.listeners:
            sock.close()
        if self.records is not None:
            self.records.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s transparent %(levelname)s %(message)s")
    # Our sockets carry this group, which the diversion rules leave alone.
    os.setgroups([])
    os.setgid(args.gid)
    if not keep_buffers_in_heap():
        logger.warning("mallopt unavailable: large buffers are mapped one by one (slower)")
    args.sched = set_realtime(args.rt_priority)
    if args.rt_priority and not args.sched.startswith("SCHED_FIFO"):
        logger.warning("no real-time priority: %s", args.sched)
    out_config, in_config = stream_configs(args.proto, args.policy)
    proxy = Proxy(args, out_config, in_config)

    def start_and_serve() -> None:
        proxy.listen()
        queries.serve(proxy, args.name)
        helperproc.announce_ready()
        proxy.serve()

    helperproc.run(start_and_serve, teardown=proxy.close, announce=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
