"""The TLS-aware middlebox models on real kernel traffic: openssl s_server behind the box,
s_client in front of it, captures on both sides (client -- mb -- server).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from testbed.net.flows import Connection, connections, payload_contains
from testbed.net.network import Network
from testbed.net.pcap import read_segments
from tests.emulation.middlebox_support import both_sides, c2s, connect, installed, mb_network, s2c


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=server", "-days", "2",
                    "-keyout", str(d / "k.pem"), "-out", str(d / "c.pem")],
                   check=True, capture_output=True, timeout=30)
    return d / "c.pem", d / "k.pem"


EXPORT = ["-keymatexport", "EXPORTER-tcpinc", "-keymatexportlen", "32"]


@contextmanager
def s_server(net: Network, cert: tuple[Path, Path], log: Path) -> Iterator[Path]:
    """openssl s_server on 443 writing to ``log``; its stdin stays open (EOF stops it)."""
    argv = ["openssl", "s_server", "-accept", "443", "-cert", str(cert[0]), "-key",
            str(cert[1]), *EXPORT]
    with log.open("w") as out:
        proc = net.popen("server", argv, stdin=subprocess.PIPE, stdout=out,
                         stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 5
        while "ACCEPT" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
        yield log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdin:
            proc.stdin.close()


def s_client(net: Network, *flags: str) -> tuple[int, str]:
    """One s_client handshake, bounded; stdin at EOF makes it close after the handshake."""
    proc = net.popen("client", ["openssl", "s_client", "-connect", f"{net.ip('server')}:443",
                                *EXPORT, *flags], stdin=subprocess.DEVNULL)
    try:
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out + err


def keying(text: str) -> list[str]:
    return [line.split(":", 1)[1].strip() for line in text.splitlines()
            if "Keying material:" in line]


def server_keying(log: Path, count: int, timeout: float = 10.0) -> list[str]:
    """s_server's keying lines once it has printed ``count`` of them (it prints its side
    after its handshake, so the client may finish first)."""
    deadline = time.monotonic() + timeout
    while len(found := keying(log.read_text())) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(found) >= count, f"s_server printed {len(found)} keying lines, not {count}"
    return found


def reset_before_client_fin(conn: Connection) -> bool:
    """A reset seen before the client's FIN (in capture order)."""
    for cs in conn.segments:
        if cs.segment.is_rst:
            return True
        if cs.direction == "c2s" and cs.segment.is_fin:
            return False
    return False


def test_dpi_443_resets_non_tls_and_passes_tls(cert: tuple[Path, Path],
                                               tmp_path: Path) -> None:
    with mb_network() as net, s_server(net, cert, tmp_path / "srv.log"), \
            installed(net, "dpi-443") as box, both_sides(net, tmp_path) as (cpath, spath):
        rc, text = s_client(net)
        assert rc == 0 and len(keying(text)) == 1
        assert connect(net, port=443, send="GET / HTTP/1.1\r\n\r\n") == "reset"
        counters = box.counters()
    assert counters["reset"] == 1
    conns = [c for c in connections(read_segments(spath)).values() if c.key.server_port == 443]
    # The box's reset comes before the client's FIN; the TLS connection's client may reset
    # session tickets that arrive after it closed (see the tls12-strict test below).
    killed = [c for c in conns if reset_before_client_fin(c)]
    assert len(conns) == 2 and len(killed) == 1
    assert not payload_contains(killed[0], b"GET /"), "the non-TLS bytes never arrive"
    assert any(s.is_rst and s.src == net.ip("client") for s in c2s(killed[0]))
    client_rst = [s for c in connections(read_segments(cpath)).values() for s in s2c(c)
                  if s.is_rst]
    assert len(client_rst) == 1 and client_rst[0].src == net.ip("server")


def test_tls12_strict_kills_tls13_without_compat_mode(cert: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    with mb_network() as net, s_server(net, cert, tmp_path / "srv.log"), \
            installed(net, "tls12-strict") as box, both_sides(net, tmp_path) as (_, spath):
        results = {flags: s_client(net, *flags) for flags in
                   [(), ("-tls1_2",), ("-no_middlebox",)]}
        stats = box.stats()
    assert results[()][0] == 0 and "TLSv1.3" in results[()][1]
    assert results[("-tls1_2",)][0] == 0 and "TLSv1.2" in results[("-tls1_2",)][1]
    rc, text = results[("-no_middlebox",)]
    assert rc != 0 and not keying(text)
    assert stats["counters"]["reset"] == 1
    assert "server_certs" in stats["kill_reasons"][0]
    conns = list(connections(read_segments(spath)).values())
    # The box's reset comes before the client closes; a completed handshake's client may answer
    # data that arrives after its close (s_client leaves at stdin's EOF while session tickets
    # are still on the way) with a reset too, which is the client's kernel, not the box.
    assert sum(reset_before_client_fin(c) for c in conns) == 1


def test_tls_mitm_completes_both_handshakes_with_different_keys(cert: tuple[Path, Path],
                                                                 tmp_path: Path) -> None:
    with mb_network() as net, s_server(net, cert, tmp_path / "srv.log") as log:
        materials = {}
        for count, spec in enumerate(("passthrough", "tls-mitm"), start=1):
            with installed(net, spec):
                rc, text = s_client(net)
                assert rc == 0, text
                [client_key] = keying(text)
                materials[spec] = (client_key, server_keying(log, count)[-1], text)
    plain_client, plain_server_key, _ = materials["passthrough"]
    mitm_client, mitm_server_key, mitm_text = materials["tls-mitm"]
    assert plain_client == plain_server_key, "control: one session end to end"
    assert mitm_client != mitm_server_key, "two sessions: the exporter values differ"
    assert "CN = tcpinc-mitm" in mitm_text
