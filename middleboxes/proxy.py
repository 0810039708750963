"""The split-TCP / TLS-intercepting proxy process run on a middlebox node.

    python -m middleboxes.proxy --mode tcp|tls --listen PORT --stats PATH

iptables ``nat PREROUTING ... -j REDIRECT --to-ports PORT`` on the node hands the
client's connection to this process; the kernel of the middlebox completes the client's
handshake (so the client's SYN options, ENO included, end here). ``SO_ORIGINAL_DST``
gives the address the client asked for, and the proxy opens its own connection to it
from the node's address, with its own SYN and options. Bytes are relayed both ways; an
EOF in one direction becomes a shutdown(SHUT_WR) (TLS: close_notify, then SHUT_WR) of
the other, so half-closed connections keep working (RFC 9293 section 3.6).

``--mode tls`` terminates TLS towards the client with a key and self-signed certificate
generated at start (ECDSA P-256), and re-originates TLS to the server without verifying
it, passing on the client's SNI: both ends complete a handshake, but with the proxy, so
their two TLS sessions (and every exporter value, RFC 5705) differ.

Counters count connections: seen (accepted), changed (relayed to the server), dropped
(the server could not be reached or the handshake failed), reset (client connection
reset because of that).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import select
import socket
import struct
import threading
from pathlib import Path
from typing import Any, Protocol

from middleboxes.helper import StatsWriter
from testbed import helperproc

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
CHUNK = 65536
CONNECT_TIMEOUT = 5.0


class Side(Protocol):
    """One end of a relay: a plain socket or a TLS connection over one."""

    sock: socket.socket

    def recv(self) -> bytes: ...  # b"" at EOF
    def pending(self) -> bool: ...
    def send(self, data: bytes) -> None: ...
    def shutdown_write(self) -> None: ...
    def close(self) -> None: ...


class PlainSide:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv(self) -> bytes:
        try:
            return self.sock.recv(CHUNK)
        except ConnectionResetError:
            return b""

    def pending(self) -> bool:
        return False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        with contextlib.suppress(OSError):  # the peer may already be gone
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


class TlsSide:
    def __init__(self, conn: Any, sock: socket.socket) -> None:
        self.conn, self.sock = conn, sock

    def recv(self) -> bytes:
        from OpenSSL import SSL

        while True:
            try:
                return bytes(self.conn.recv(CHUNK))
            except SSL.WantReadError:
                # Only part of a record is here; the rest follows (blocking socket).
                continue
            except (SSL.ZeroReturnError, SSL.SysCallError, SSL.Error):
                return b""  # close_notify, TCP EOF or a broken record all end this side

    def pending(self) -> bool:
        return bool(self.conn.pending())

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)

    def shutdown_write(self) -> None:
        from OpenSSL import SSL

        with contextlib.suppress(SSL.Error, OSError):  # the peer may already be gone
            self.conn.shutdown()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """Where the client was going before REDIRECT (struct sockaddr_in)."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack("!H", raw[2:4])[0]
    return socket.inet_ntoa(raw[4:8]), port


def relay(a: Side, b: Side) -> int:
    """Copy bytes both ways until both directions reached EOF; returns bytes relayed."""
    open_from = {id(a): (a, b), id(b): (b, a)}
    total = 0
    while open_from:
        ready = [src for src, _ in open_from.values() if src.pending()]
        if not ready:
            socks = {src.sock: src for src, _ in open_from.values()}
            readable, _, _ = select.select(list(socks), [], [])
            ready = [socks[s] for s in readable]
        for src in ready:
            dst = open_from[id(src)][1]
            data = src.recv()
            if data:
                dst.send(data)
                total += len(data)
            else:
                dst.shutdown_write()
                del open_from[id(src)]
    return total


class Proxy:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.lock = threading.Lock()
        self.counts = {"seen": 0, "changed": 0, "dropped": 0, "reset": 0}
        self.errors: list[str] = []
        self.server_ctx: Any = None
        self.client_ctx: Any = None
        if mode == "tls":
            self.server_ctx, self.client_ctx = tls_contexts()

    def count(self, key: str, error: str | None = None) -> None:
        with self.lock:
            self.counts[key] += 1
            if error:
                self.errors = [*self.errors[-19:], error]

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"model": f"proxy-{self.mode}", "counters": dict(self.counts),
                    "errors": list(self.errors)}

    def handle(self, client: socket.socket) -> None:
        self.count("seen")
        try:
            target = original_destination(client)
            upstream = socket.create_connection(target, timeout=CONNECT_TIMEOUT)
            upstream.settimeout(None)
        except OSError as err:
            self.count("dropped", f"connect: {err}")
            reset(client)
            self.count("reset")
            return
        try:
            down, up = self.sides(client, upstream)
        except Exception as err:  # any TLS failure ends this connection, not the proxy
            self.count("dropped", f"handshake: {err!r}")
            reset(client)
            upstream.close()
            self.count("reset")
            return
        self.count("changed")
        try:
            relay(down, up)
        except OSError as err:
            self.count("reset", f"relay: {err}")
        finally:
            down.close()
            up.close()

    def sides(self, client: socket.socket, upstream: socket.socket) -> tuple[Side, Side]:
        if self.mode == "tcp":
            return PlainSide(client), PlainSide(upstream)
        from OpenSSL import SSL

        names: list[bytes] = []
        down = SSL.Connection(self.server_ctx, client)
        down.set_app_data(names)
        down.set_accept_state()
        down.do_handshake()
        up = SSL.Connection(self.client_ctx, upstream)
        if names:
            up.set_tlsext_host_name(names[0])
        up.set_connect_state()
        up.do_handshake()
        return TlsSide(down, client), TlsSide(up, upstream)


def reset(sock: socket.socket) -> None:
    """Close with a RST (SO_LINGER 0), as a proxy does when it cannot serve a client."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def tls_contexts() -> tuple[Any, Any]:
    """A server context with a fresh key and self-signed certificate; a client context."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from OpenSSL import SSL

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tcpinc-mitm")])
    start = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start.replace(year=2099))
            .sign(key, hashes.SHA256()))
    server = SSL.Context(SSL.TLS_METHOD)
    server.use_certificate(cert)
    server.use_privatekey(key)

    def on_sni(conn: Any) -> None:
        name = conn.get_servername()
        if name:
            conn.get_app_data().append(name)

    server.set_tlsext_servername_callback(on_sni)
    client = SSL.Context(SSL.TLS_METHOD)
    client.set_verify(SSL.VERIFY_NONE, lambda *args: True)  # an interceptor trusts anyone
    return server, client


def serve(proxy: Proxy, port: int) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(512)
    helperproc.announce_ready()
    try:
        while True:
            client, _ = listener.accept()
            threading.Thread(target=proxy.handle, args=(client,), daemon=True).start()
    finally:
        listener.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("tcp", "tls"), required=True)
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--stats", type=Path, required=True)
    args = parser.parse_args(argv)
    proxy = Proxy(args.mode)
    writer = StatsWriter(args.stats, proxy.snapshot)
    # Stop (SIGTERM from the network's helper teardown) is the normal way out.
    helperproc.run(lambda: serve(proxy, args.listen), dump=writer.dump, announce=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
