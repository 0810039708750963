"""Helpers the middlebox tests share (test_middleboxes.py, test_middlebox_tls.py): the
client -- mb -- server network, a model installed in mb, captures on both sides of it, one
client connection, and a captured connection's segments by direction.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import middleboxes
import topologies
from testbed.net.capture import Capture
from testbed.net.flows import Connection
from testbed.net.network import Network

PORT = 5000
CONNECT = """
import errno, socket, sys
s = socket.socket()
s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    if sys.argv[4]:
        s.sendall(sys.argv[4].encode())
        s.shutdown(socket.SHUT_WR)
        while s.recv(100):
            pass
    print("ok")
except socket.timeout:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
except ConnectionResetError:
    print("reset")
except OSError as err:
    # A RST that lands between send and shutdown leaves the socket unconnected.
    print("reset" if err.errno == errno.ENOTCONN else repr(err))
"""


@contextmanager
def mb_network() -> Iterator[Network]:
    with Network(topologies.create("middlebox")) as net:
        yield net


@contextmanager
def installed(net: Network, spec: str) -> Iterator[Any]:
    box = middleboxes.create(spec)
    box.install(net, "mb")
    try:
        yield box
    finally:
        box.remove()


@contextmanager
def both_sides(net: Network, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Captures on the client's and the server's interface (outside the box)."""
    cpath, spath = tmp_path / "client.pcap", tmp_path / "server.pcap"
    with Capture(net.nodes["client"], net.intf("client"), cpath), \
            Capture(net.nodes["server"], net.intf("server"), spath):
        yield cpath, spath


def connect(net: Network, port: int = PORT, send: str = "", timeout: float = 1.0) -> str:
    out = net.run("client", [sys.executable, "-c", CONNECT, net.ip("server"), str(port),
                             str(timeout), send], timeout=timeout + 10)
    return out.strip()


def c2s(conn: Connection) -> list[Any]:
    return [cs.segment for cs in conn.segments if cs.direction == "c2s"]


def s2c(conn: Connection) -> list[Any]:
    return [cs.segment for cs in conn.segments if cs.direction == "s2c"]
