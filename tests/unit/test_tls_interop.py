"""Interop with a TLS 1.3 implementation nobody here wrote: the ``openssl`` command line tool.

The engine's client talks to ``openssl s_server`` and its server to ``openssl s_client`` over
real loopback sockets (127.0.0.1 only, kernel-chosen ports), through a small socket shell
around the sans-IO core. Full, resumed and 0-RTT handshakes, data both ways, close_notify.
Every wait is time-bounded and every openssl process is killed in a ``finally``.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pytest

from testbed.teps.base import (
    DataReceived,
    EndOfStream,
    HandshakeComplete,
    Role,
    TepContext,
    TepEvent,
)
from testbed.teps.tls import ServerIdentity, TlsCore, TlsSessionCache

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="no openssl command line tool")
TIMEOUT = 5.0


@dataclass(frozen=True)
class TcpEof(TepEvent):
    """Test-side marker: the socket delivered EOF (the FIN) and peer_closed() was called."""


class OpenSSLProcess:
    """An openssl child with stdout+stderr collected by a thread; killed on exit, always."""

    def __init__(self, args: Sequence[str], cwd: Path) -> None:
        assert OPENSSL is not None
        self.proc = subprocess.Popen(
            [OPENSSL, *args],
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._output = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while chunk := os.read(fd, 4096):
            with self._lock:
                self._output += chunk

    @property
    def output(self) -> bytes:
        with self._lock:
            return bytes(self._output)

    def wait_for(self, needle: bytes, timeout: float = TIMEOUT) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            if time.monotonic() > deadline:
                raise AssertionError(f"openssl never printed {needle!r}:\n{self.output.decode()}")
            time.sleep(0.01)
        return self.output

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def finish(self, timeout: float = TIMEOUT) -> bytes:
        """Wait for a normal exit; the output so far."""
        self.proc.wait(timeout)
        self._reader.join(timeout)
        return self.output

    def __enter__(self) -> OpenSSLProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()
        self._reader.join(TIMEOUT)


# --- the socket shell around the sans-IO core ------------------------------------------------


def flush(sock: socket.socket, core: TlsCore) -> None:
    out = core.data_to_send()
    if out:
        sock.sendall(out)


def drive(
    sock: socket.socket,
    core: TlsCore,
    until: Callable[[list[TepEvent]], bool],
    timeout: float = TIMEOUT,
) -> list[TepEvent]:
    """Shuttle bytes between ``sock`` and ``core`` until ``until(events)`` holds."""
    events: list[TepEvent] = []
    deadline = time.monotonic() + timeout
    while not until(events):
        flush(sock, core)
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting; events so far: {events}")
        readable, _, _ = select.select([sock], [], [], min(left, 0.05))
        if not readable:
            continue
        data = sock.recv(65536)
        if not data:
            events += core.peer_closed()
            events.append(TcpEof())
            if not until(events):
                raise AssertionError(f"peer closed early; events: {events}")
            break
        events += core.receive_data(data, time.monotonic())
    flush(sock, core)
    return events


def has(kind: type[TepEvent]) -> Callable[[list[TepEvent]], bool]:
    return lambda events: any(isinstance(e, kind) for e in events)


def received(events: list[TepEvent], *, early: bool | None = None) -> bytes:
    return b"".join(
        e.data
        for e in events
        if isinstance(e, DataReceived) and (early is None or e.early == early)
    )


def completed(events: list[TepEvent]) -> HandshakeComplete:
    (done,) = [e for e in events if isinstance(e, HandshakeComplete)]
    return done


# --- engine client -> openssl s_server -------------------------------------------------------


def client_round(
    port: int, server: OpenSSLProcess, options: dict[str, object], n: int
) -> tuple[HandshakeComplete, bytes]:
    core = TlsCore(TepContext(role=Role.A, transcript=b"", options=options))
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        core.start(time.monotonic())
        core.send_data(b"hello-%d\n" % n)
        events = drive(sock, core, has(HandshakeComplete))
        # s_server is now in its data loop for this connection: its stdin goes to us.
        server.write(b"reply-%d\n" % n)
        events += drive(sock, core, lambda ev: b"reply-%d\n" % n in received(events + ev))
        core.close()
        events += drive(sock, core, has(TcpEof))
    assert isinstance(events[-2], EndOfStream)  # s_server sent close_notify before its FIN
    return completed(events), received(events)


def test_engine_client_against_openssl_s_server(tmp_path: Path) -> None:
    identity = ServerIdentity()  # only its key and certificate are used, by s_server
    cert, key = identity.write_pem(tmp_path)
    args = ["s_server", "-accept", "127.0.0.1:0", "-cert", str(cert), "-key", str(key)]
    args += ["-tls1_3", "-early_data", "-naccept", "3"]
    cache = TlsSessionCache()
    base = {
        "session_cache": cache,
        "session_peer": "s_server",
        "pin_spki_sha256": identity.spki_sha256,
    }
    with OpenSSLProcess(args, tmp_path) as server:
        accept_line = server.wait_for(b"ACCEPT 127.0.0.1:").split(b"ACCEPT 127.0.0.1:")[1]
        port = int(accept_line.split()[0])
        full, data0 = client_round(port, server, base, 0)
        resumed, data1 = client_round(port, server, base, 1)
        early, data2 = client_round(port, server, {**base, "early_data": b"early-2\n"}, 2)
        output = server.finish()
    assert not full.resumed and full.early_data_accepted is None
    assert resumed.resumed and resumed.early_data_accepted is None
    assert early.resumed and early.early_data_accepted is True
    assert (data0, data1, data2) == (b"reply-0\n", b"reply-1\n", b"reply-2\n")
    # s_server's per-connection report is not always printed; its cache statistics are.
    assert b"2 session cache hits" in output, output.decode()
    for needle in (b"hello-0", b"hello-1", b"Early data received", b"early-2", b"hello-2"):
        assert needle in output, output.decode()


# --- openssl s_client -> engine server -------------------------------------------------------


def server_round(
    listener: socket.socket, identity: ServerIdentity, client: OpenSSLProcess, n: int
) -> list[TepEvent]:
    client.write(b"hello-%d\n" % n)
    sock, _ = listener.accept()
    with sock:
        options = {"server_identity": identity}
        core = TlsCore(TepContext(role=Role.B, transcript=b"", options=options))
        core.start(time.monotonic())
        hello = b"hello-%d\n" % n
        events = drive(sock, core, lambda ev: hello in received(ev, early=False))
        core.send_data(b"reply-%d\n" % n)
        events += drive(sock, core, lambda ev: b"reply-%d" % n in client.output)
        client.close_stdin()  # s_client answers EOF with close_notify
        events += drive(sock, core, has(EndOfStream))
        core.close()
        flush(sock, core)
    return events


def test_engine_server_against_openssl_s_client(tmp_path: Path) -> None:
    identity = ServerIdentity.with_early_data()
    (tmp_path / "early.txt").write_bytes(b"early-from-s_client\n")
    extras = [
        ["-sess_out", "s0.pem"],
        ["-sess_in", "s0.pem", "-sess_out", "s1.pem"],
        ["-sess_in", "s1.pem", "-early_data", "early.txt"],
    ]
    results: list[tuple[list[TepEvent], bytes]] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(TIMEOUT)
        port = listener.getsockname()[1]
        for n, extra in enumerate(extras):
            args = ["s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3", *extra]
            with OpenSSLProcess(args, tmp_path) as client:
                events = server_round(listener, identity, client, n)
                results.append((events, client.finish()))
    (full, out0), (resumed, out1), (early, out2) = results
    assert b"New, TLSv1.3" in out0 and not completed(full).resumed
    assert b"Reused, TLSv1.3" in out1 and completed(resumed).resumed
    assert b"Early data was accepted" in out2
    assert completed(early) == HandshakeComplete(
        completed(early).session_id, resumed=True, early_data_accepted=True
    )
    assert received(early, early=True) == b"early-from-s_client\n"
    for n, (_, out) in enumerate(results):
        assert b"reply-%d" % n in out
