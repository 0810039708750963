"""Request/response server run inside a host: `python -m testbed.apps.server`.

Prints ``ready`` once listening. Each connection carries requests (see
testbed/apps/wire.py); each is answered with the requested number of pattern
bytes. Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
from types import FrameType

from testbed.apps.transport import get_transport
from testbed.apps.wire import REQUEST, WireError, decode_request_header, pattern


class Stop(Exception):
    """Raised from the signal handler so blocking calls end (PEP 475 restarts them)."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Stop(signum)


def _read_exact(conn: object, size: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < size:
        chunk = conn.recv(size - len(buf))  # type: ignore[attr-defined]
        if not chunk:
            return None if not buf else bytes(buf)
        buf += chunk
    return bytes(buf)


def serve_connection(conn: object, request_size: int) -> None:
    """Answer requests until the client closes."""
    try:
        while True:
            header = _read_exact(conn, REQUEST.size)
            if header is None:
                return
            request_id, response_size = decode_request_header(header)
            padding = request_size - REQUEST.size
            if padding > 0 and _read_exact(conn, padding) is None:
                return
            conn.sendall(pattern(request_id, response_size))  # type: ignore[attr-defined]
    except (OSError, WireError) as exc:
        print(f"server: connection error: {exc}", file=sys.stderr, flush=True)
    finally:
        conn.close()  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--proto", default="plain")
    parser.add_argument("--request-size", type=int, default=REQUEST.size)
    args = parser.parse_args(argv)
    transport = get_transport(args.proto)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((args.bind, args.port))
    transport.listen(lsock)
    lsock.listen(1024)
    print("ready", flush=True)
    try:
        while True:
            sock, _ = lsock.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = transport.accept(sock)
            threading.Thread(
                target=serve_connection, args=(conn, args.request_size), daemon=True
            ).start()
    except Stop:
        return 0
    finally:
        lsock.close()


if __name__ == "__main__":
    sys.exit(main())
