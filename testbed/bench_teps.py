"""`tcpinc bench handshake` and `tcpinc bench throughput`: the TEPs' cost, side by side.

handshake: in-memory handshakes per second on one core and client/server CPU per
handshake for every tcpcrypt TEP (fresh and resumed) and the TLS TEP (full,
resumed, 0-RTT) -- the same harness for both, so the figures compare.

throughput: bulk transfer over real loopback TCP between two processes (sender
= role A, receiver = role B, one core each): plain TCP, the stdlib ``ssl``
module (TLS 1.3), tcpcrypt framing and the TLS TEP, reporting MB/s of
application data, CPU seconds per side and bytes on the wire per application
byte. Every figure is measured in the same run; nothing is asserted here.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from testbed.teps.base import DataReceived, Role, TepContext, TepCore
from testbed.teps.tcpcrypt import bench as tcpcrypt_bench
from testbed.teps.tcpcrypt.constants import AeadId, TepId
from testbed.teps.tcpcrypt.core import TcpcryptCore
from testbed.teps.tcpcrypt.options import OPT_CIPHERS
from testbed.teps.tls import bench as tls_bench
from testbed.teps.tls.core import TlsCore
from testbed.teps.tls.identity import ServerIdentity

TRANSCRIPT = bytes.fromhex("45042023") + bytes.fromhex("45030023")  # a plausible ENO transcript
CHUNK = 16384


# The variants the latency arms run (tcpcrypt's preferred TEP, the TLS profile) also get a
# cold figure: each flight after COLD_IDLE_S of sleep, as on a path (testbed/bench_endpoints.py).
COLD_IDLE_S = 0.01


def handshake_rows(count: int, cold_count: int = 0) -> list[dict[str, Any]]:
    """Per TEP variant: handshakes/s and client and server CPU per handshake, warm (back to
    back); with ``cold_count``, the latency arms' variants also after COLD_IDLE_S of idleness
    before each flight (``*_cold_ms``, that many handshakes; the rest None)."""
    rows: list[dict[str, Any]] = []
    for tep in (TepId.P256, TepId.P521, TepId.X25519, TepId.X448):
        for resumed in (False, True):
            r = tcpcrypt_bench.bench_handshakes(tep, count=count, resumed=resumed)
            cold = (tcpcrypt_bench.bench_handshakes(tep, count=cold_count, resumed=resumed,
                                                    idle_s=COLD_IDLE_S)
                    if cold_count and tep == TepId.X25519 else None)
            rows.append({"tep": r["tep"], "variant": "resumed" if resumed else "fresh",
                         "handshakes_per_s": r["handshakes_per_s"],
                         "client_cpu_ms": r["client_cpu_s_per_handshake"] * 1e3,
                         "server_cpu_ms": r["server_cpu_s_per_handshake"] * 1e3, **_cold(cold)})
    for variant, kwargs in (("full", {}), ("resumed (beyond the draft)", {"resumed": True}),
                            ("0-RTT (beyond the draft)", {"resumed": True,
                                                          "early_data": b"GET / HTTP/1.0"})):
        r = tls_bench.handshakes(count, **kwargs)  # type: ignore[arg-type]
        cold = (tls_bench.handshakes(cold_count, idle_s=COLD_IDLE_S, **kwargs)  # type: ignore[arg-type]
                if cold_count else None)
        rows.append({"tep": "tls (0x30, non-standard)", "variant": variant,
                     "handshakes_per_s": r["handshakes_per_s"],
                     "client_cpu_ms": r["client_cpu_s_per_handshake"] * 1e3,
                     "server_cpu_ms": r["server_cpu_s_per_handshake"] * 1e3, **_cold(cold)})
    return rows


def _cold(result: dict[str, Any] | None) -> dict[str, float | None]:
    if result is None:
        return {"client_cpu_cold_ms": None, "server_cpu_cold_ms": None, "cold_idle_ms": None}
    return {"client_cpu_cold_ms": result["client_cpu_s_per_handshake"] * 1e3,
            "server_cpu_cold_ms": result["server_cpu_s_per_handshake"] * 1e3,
            "cold_idle_ms": result["idle_s"] * 1e3}


# -- loopback throughput ------------------------------------------------------


class CountingSocket:
    """Counts the bytes a side writes to TCP (TEP overhead included)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent = 0

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent += len(data)


def _pump_handshake(core: TepCore, sock: socket.socket, out: CountingSocket) -> int:
    """Run the handshake over ``sock``; returns application bytes that arrived with its end."""
    core.start(time.monotonic())
    early = 0
    while True:
        data = core.data_to_send()
        if data:
            out.sendall(data)
        if core.handshake_complete:
            return early  # anything read now would be application data
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("peer closed during the handshake")
        for event in core.receive_data(chunk, time.monotonic()):
            if isinstance(event, DataReceived):
                early += len(event.data)


def _make_core(kind: str, role: Role, identity: ServerIdentity | None) -> TepCore:
    if kind.startswith("tcpcrypt"):
        aead = AeadId.AES_256_GCM if kind.endswith("256") else AeadId.AES_128_GCM
        ctx = TepContext(role, TRANSCRIPT, options={OPT_CIPHERS: (aead,)})
        return TcpcryptCore(ctx, TepId.X25519)
    # The client offers AES-128-GCM only, the suite the stdlib arm and tcpcrypt also use.
    options: dict[str, Any] = ({"server_identity": identity} if role is Role.B
                               else {"ciphersuites": ("TLS_AES_128_GCM_SHA256",)})
    return TlsCore(TepContext(role, TRANSCRIPT, options=options))


def _stdlib_contexts(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    identity = ServerIdentity()
    cert, key = identity.write_pem(tmp)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.TLSv1_3
    server.load_cert_chain(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.minimum_version = ssl.TLSVersion.TLSv1_3
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    return client, server


def _receiver(kind: str, lsock: socket.socket, total: int, result: Connection,
              identity: ServerIdentity | None, server_ctx: ssl.SSLContext | None) -> None:
    sock, _ = lsock.accept()
    cpu0 = time.process_time()
    received = 0
    if kind == "plain" or kind == "stdlib-ssl":
        conn: Any = server_ctx.wrap_socket(sock, server_side=True) if server_ctx else sock
        while received < total:
            chunk = conn.recv(1 << 18)
            if not chunk:
                break
            received += len(chunk)
    else:
        core = _make_core(kind, Role.B, identity)
        received = _pump_handshake(core, sock, CountingSocket(sock))
        while received < total:
            chunk = sock.recv(1 << 18)
            if not chunk:
                break
            for event in core.receive_data(chunk, 0.0):
                if isinstance(event, DataReceived):
                    received += len(event.data)
    result.send({"received": received, "cpu_s": time.process_time() - cpu0,
                 "t_end": time.perf_counter()})
    sock.close()


def _sender(kind: str, port: int, total: int, client_ctx: ssl.SSLContext | None) -> dict:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    out = CountingSocket(sock)
    payload = bytes(CHUNK)
    cpu0 = time.process_time()
    if kind in ("plain", "stdlib-ssl"):
        conn: Any = client_ctx.wrap_socket(sock) if client_ctx else sock
        t0 = time.perf_counter()
        for _ in range(total // CHUNK):
            conn.sendall(payload)
        cipher = conn.cipher()[0] if client_ctx else None
    else:
        core = _make_core(kind, Role.A, None)
        _pump_handshake(core, sock, out)
        out.sent = 0
        t0 = time.perf_counter()
        for _ in range(total // CHUNK):
            core.send_data(payload)
            out.sendall(core.data_to_send())
        cipher = getattr(core, "cipher_name", None) or kind
    cpu = time.process_time() - cpu0
    # Keep the (possibly TLS-wrapped) socket alive until the receiver has everything.
    conn_alive = conn if kind in ("plain", "stdlib-ssl") else sock
    return {"t0": t0, "cpu_s": cpu, "cipher": cipher, "wire_bytes": out.sent, "sock": conn_alive}


# The stdlib ssl module (Python 3.11) cannot choose TLS 1.3 suites, and OpenSSL prefers
# AES-256-GCM; an OpenSSL config file restricts it to AES-128-GCM, the suite the other arms
# use, in a child process (the config is read when OpenSSL starts).
_SSL_CONF = """openssl_conf = tcpinc_conf
[tcpinc_conf]
ssl_conf = tcpinc_ssl
[tcpinc_ssl]
system_default = tcpinc_default
[tcpinc_default]
Ciphersuites = TLS_AES_128_GCM_SHA256
"""
_CHILD_ENV = "TCPINC_BENCH_SSL_CHILD"


def _stdlib_ssl_in_child(total: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "openssl.cnf"
        conf.write_text(_SSL_CONF)
        env = {**os.environ, "OPENSSL_CONF": str(conf), _CHILD_ENV: "1"}
        proc = subprocess.run(
            [sys.executable, "-c", "import json, sys; from testbed import bench_teps as b; "
             f"print(json.dumps(b.loopback_throughput('stdlib-ssl', {total})))"],
            env=env, capture_output=True, text=True, check=False, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"stdlib-ssl child failed: {proc.stderr.strip()[-400:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def loopback_throughput(kind: str, total: int) -> dict[str, Any]:
    """One transfer of ``total`` bytes from a sender process to a receiver process."""
    if kind == "stdlib-ssl" and not os.environ.get(_CHILD_ENV):
        return _stdlib_ssl_in_child(total)
    identity = ServerIdentity() if kind == "tls" else None
    with tempfile.TemporaryDirectory() as tmp:
        client_ctx, server_ctx = (_stdlib_contexts(Path(tmp)) if kind == "stdlib-ssl"
                                  else (None, None))
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        parent, child = mp.Pipe()
        proc = mp.get_context("fork").Process(
            target=_receiver, args=(kind, lsock, total, child, identity, server_ctx))
        proc.start()
        try:
            sent = _sender(kind, lsock.getsockname()[1], total, client_ctx)
            got = parent.recv() if parent.poll(120) else None
        finally:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
            lsock.close()
    if got is None or got["received"] != total:
        raise RuntimeError(f"{kind}: receiver got {got and got['received']} of {total} bytes")
    sent["sock"].close()
    seconds = got["t_end"] - sent["t0"]
    wire = sent["wire_bytes"] if kind not in ("plain", "stdlib-ssl") else None
    return {"kind": kind, "cipher": sent["cipher"], "mb_per_s": total / seconds / 1e6,
            "sender_cpu_s": sent["cpu_s"], "receiver_cpu_s": got["cpu_s"],
            "wire_bytes_per_app_byte": wire / total if wire else None}


THROUGHPUT_KINDS = ("plain", "stdlib-ssl", "tcpcrypt-aes128", "tcpcrypt-aes256", "tls")


def throughput_rows(total: int, kinds: tuple[str, ...] = THROUGHPUT_KINDS) -> list[dict]:
    return [loopback_throughput(kind, total) for kind in kinds]


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str, Callable[[Any], str]]]
           ) -> str:
    head = "  ".join(f"{title:>{len(title) + 2}}" for _, title, _ in columns)
    lines = [head]
    for row in rows:
        lines.append("  ".join(f"{fmt(row.get(key)):>{len(title) + 2}}"
                               for key, title, fmt in columns))
    return "\n".join(lines)


def format_handshakes(rows: list[dict[str, Any]]) -> str:
    return _table(rows, [("tep", "TEP" + " " * 24, lambda v: f"{v:27}"),
                         ("variant", "variant" + " " * 20, lambda v: f"{v:27}"),
                         ("handshakes_per_s", "handshakes/s", lambda v: f"{v:.0f}"),
                         ("client_cpu_ms", "client CPU ms", lambda v: f"{v:.3f}"),
                         ("server_cpu_ms", "server CPU ms", lambda v: f"{v:.3f}"),
                         ("client_cpu_cold_ms", "cold", _ms_or_dash),
                         ("server_cpu_cold_ms", "cold", _ms_or_dash)])


def _ms_or_dash(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_throughput(rows: list[dict[str, Any]]) -> str:
    return _table(rows, [("kind", "transport" + " " * 8, lambda v: f"{v:17}"),
                         ("cipher", "cipher" + " " * 18, lambda v: f"{v!s:24}"),
                         ("mb_per_s", "MB/s", lambda v: f"{v:.0f}"),
                         ("sender_cpu_s", "sender CPU s", lambda v: f"{v:.2f}"),
                         ("receiver_cpu_s", "receiver CPU s", lambda v: f"{v:.2f}"),
                         ("wire_bytes_per_app_byte", "wire/app",
                          lambda v: "-" if v is None else f"{v:.4f}")])



def main(args: Any) -> None:
    """`tcpinc bench handshake|throughput`: print the table, write a CSV beside the others."""
    import pandas as pd

    if args.target == "handshake":
        rows = handshake_rows(50 if args.quick else 500, cold_count=5 if args.quick else 30)
        text = format_handshakes(rows)
    else:
        rows = throughput_rows((8 if args.quick else 256) * 2**20)
        text = format_throughput(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    csv = out / f"{args.target}-{stamp}.csv"
    pd.DataFrame(rows).to_csv(csv, index=False, float_format="%.4f")
    print(text)
    print(f"written: {csv}")
