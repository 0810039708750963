"""The real tcpdump on ``lo`` in the root namespace (root only).

A shim host whose ``popen`` has the shape of Mininet's ``Node.popen`` runs tcpdump; the
builder and the lifecycle are tested without root in tests/unit/test_capture.py.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import TCP
from scapy.utils import rdpcap

from testbed.net.capture import Capture, CaptureError
from testbed.net.flows import EventKind, connections, payload_contains
from testbed.net.pcap import PcapReader


class RootNamespaceHost:
    """A Mininet-Node-like host for the root namespace: popen runs the argv as is."""

    name = "root-ns"

    def popen(self, args: list[str], /, **kwargs: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(args, **kwargs)


# --------------------------------------------------------------------------- real tcpdump

needs_root_tcpdump = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("tcpdump") is None, reason="needs root and tcpdump")


def _exchange(server: socket.socket, request: bytes, response: bytes) -> None:
    """One TCP connection on 127.0.0.1 to ``server``: request, response, close from the
    client."""
    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            assert conn.recv(len(request), socket.MSG_WAITALL) == request
            conn.sendall(response)
            assert conn.recv(1) == b""  # client closed
    thread = threading.Thread(target=serve)
    thread.start()
    with socket.create_connection(server.getsockname()) as client:
        client.sendall(request)
        assert client.recv(len(response), socket.MSG_WAITALL) == response
    thread.join(5)


def _listener() -> socket.socket:
    """A listening socket on a port the kernel picks. It stays bound for the whole capture,
    so no other connection on ``lo`` (tests in parallel workers) can take its port as an
    ephemeral one and land in the capture's port filter."""
    return socket.create_server(("127.0.0.1", 0), backlog=64)


@needs_root_tcpdump
def test_real_capture_on_loopback(tmp_path: Path) -> None:
    path = tmp_path / "lo.pcap"
    request, response = b"GET /capture-test", b"200 capture-response"
    with _listener() as server:
        port = server.getsockname()[1]
        with Capture(RootNamespaceHost(), "lo", path, bpf_filter=f"tcp port {port}") as cap:
            _exchange(server, request, response)
    stats = cap.stats
    assert stats is not None and stats.dropped == 0 and stats.complete
    with PcapReader(path) as reader:
        assert reader.header.linktype == 1  # Linux lo is DLT_EN10MB
        segments = list(reader)
    assert len(segments) == stats.captured >= 8
    conns = connections(segments)
    assert len(conns) == 1
    (conn,) = conns.values()
    assert (conn.key.client, conn.key.server, conn.key.server_port) == (
        "127.0.0.1", "127.0.0.1", port)
    kinds = [e.kind for e in conn.timeline()]
    for kind in (EventKind.SYN, EventKind.SYNACK, EventKind.FIRST_ACK, EventKind.FIRST_DATA_C2S,
                 EventKind.FIRST_DATA_S2C, EventKind.FIN_C2S, EventKind.FIN_S2C):
        assert kinds.count(kind) == 1, kinds
    assert conn.stream_chunks("c2s") == [request]
    assert conn.stream_chunks("s2c") == [response]
    assert payload_contains(conn, b"capture-response")
    assert not payload_contains(conn, b"never-sent")
    # Handshake then request then response: four flights up to the first response byte.
    first_s2c = next(e for e in conn.timeline() if e.kind is EventKind.FIRST_DATA_S2C)
    assert [f.direction for f in conn.flights(until_index=first_s2c.index)] == [
        "c2s", "s2c", "c2s", "s2c"]
    # Our reader and scapy agree on a real kernel capture.
    theirs = [p[TCP] for p in rdpcap(str(path)) if TCP in p]
    assert [(s.seq, s.ack, s.flags, s.payload_len) for s in segments] == [
        (t.seq, t.ack, int(t.flags), len(t.payload)) for t in theirs]


@needs_root_tcpdump
def test_real_capture_reports_kernel_drops(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    # A 1 KiB ring holds a single frame: a burst of connections must overflow it.
    with _listener() as server, Capture(
            RootNamespaceHost(), "lo", tmp_path / "d.pcap", buffer_kib=1,
            bpf_filter=f"tcp port {server.getsockname()[1]}") as cap:
        for _ in range(50):
            _exchange(server, b"x" * 100, b"y" * 50)
    assert cap.stats is not None and cap.stats.dropped_by_kernel > 0
    assert not cap.stats.complete
    assert any(r.levelno == logging.WARNING and "dropped" in r.getMessage()
               for r in caplog.records)


@needs_root_tcpdump
def test_real_tcpdump_bad_interface(tmp_path: Path) -> None:
    cap = Capture(RootNamespaceHost(), "nosuch-if0", tmp_path / "x.pcap")
    with pytest.raises(CaptureError) as err:
        cap.start()
    assert "nosuch-if0" in str(err.value) and "tcpdump -i nosuch-if0" in str(err.value)
    assert "No such device" in str(err.value)
