"""Key logs for analysing captures. THESE FILES HOLD SECRETS: anyone holding one can decrypt
the connections it names. They exist so that a pcap of a test run can be read in Wireshark
(tools/wireshark/tcpinc.lua); never enable them for traffic that matters.

A process writes key logs only when the environment names a file (the workload sets these
for the client process when a run asks for key logs, next to the run's pcap):

``SSLKEYLOGFILE``        TLS (every TLS arm, with or without ENO): the NSS key log format
                         OpenSSL's keylog callback produces, one line per secret
                         (``CLIENT_HANDSHAKE_TRAFFIC_SECRET <client_random> <secret>`` ...),
                         which Wireshark reads with ``-o tls.keylog_file:FILE``.
``TCPCRYPT_KEYLOGFILE``  tcpcrypt (RFC 8548): one line per connection, direction and key
                         generation (§3.8), written when the keys exist::

    TCPCRYPT_TRAFFIC_KEY <session_id> <src_ip> <src_port> <dst_ip> <dst_port> <generation>
                         <aead_id> <key> <nonce_randomizer>

session_id is the RFC 8548 §3.4 session ID, aead_id the 4-hex-digit sym_cipher (§7 Table 5),
key and nonce_randomizer the two parts of k_ab[j] or k_ba[j] (§3.6) protecting the bytes
src sends to dst; every binary field is lower-case hex, all on one line. The dissector matches
a line to a connection by its addresses and ports, and a key only counts once it
authenticates a frame, so a stale or wrong line yields no plaintext, never a wrong one.

Lines are appended with one ``write`` on an ``O_APPEND`` descriptor, so processes may share
a file; files are created with mode 0600. A process that times its connections (the workload's
client) calls ``defer()``: lines then wait in memory until its ``flush()`` after the connection
(and at exit), because a write to disk costs about 0.1 ms on the development VM and TLS 1.3
logs five secrets inside the handshake, on the path the client's host time measures.
"""

from __future__ import annotations

import atexit
import os
import socket
import threading
from typing import Any

from OpenSSL import SSL

TLS_ENV = "SSLKEYLOGFILE"
TCPCRYPT_ENV = "TCPCRYPT_KEYLOGFILE"
TCPCRYPT_TAG = "TCPCRYPT_TRAFFIC_KEY"


def environment(directory_file_stem: str) -> dict[str, str]:
    """The variables that make a process write both key logs next to ``stem``.pcap."""
    return {TLS_ENV: f"{directory_file_stem}.sslkeylog",
            TCPCRYPT_ENV: f"{directory_file_stem}.tcpcrypt-keylog"}


_pending: dict[str, list[bytes]] | None = None  # path -> lines, while deferred
_lock = threading.Lock()


def defer() -> None:
    """Keep lines in memory until ``flush()`` (which also runs at exit)."""
    global _pending
    with _lock:
        if _pending is None:
            _pending = {}
            atexit.register(flush)


def flush() -> None:
    """Write the deferred lines (one write per file)."""
    with _lock:
        if not _pending:
            return
        ready = {path: b"".join(lines) for path, lines in _pending.items()}
        _pending.clear()
    for path, data in ready.items():
        _write(path, data)


def _append(path: str, line: bytes) -> None:
    with _lock:
        if _pending is not None:
            _pending.setdefault(path, []).append(line)
            return
    _write(path, line)


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def tls_enabled() -> bool:
    return bool(os.environ.get(TLS_ENV))


def tls_callback(conn: SSL.Connection, line: bytes) -> None:
    """pyOpenSSL keylog callback (SSL_CTX_set_keylog_callback): one NSS-format line."""
    path = os.environ.get(TLS_ENV)
    if path:
        _append(path, line.rstrip(b"\n") + b"\n")


def tcpcrypt_line(session_id: bytes, src: tuple[str, int], dst: tuple[str, int],
                  generation: int, aead_id: int, key: bytes, nonce_randomizer: bytes) -> str:
    return (f"{TCPCRYPT_TAG} {session_id.hex()} {src[0]} {src[1]} {dst[0]} {dst[1]} "
            f"{generation} {aead_id:04x} {key.hex()} {nonce_randomizer.hex()}\n")


def note_tep_keys(core: Any, sock: socket.socket, logged: set[tuple[str, int]]) -> None:
    """Log the TEP's current traffic keys that ``logged`` does not hold yet.

    Only cores with ``key_log()`` (tcpcrypt) have keys of their own to log; the TLS TEP's
    secrets go through OpenSSL's callback instead.
    """
    path = os.environ.get(TCPCRYPT_ENV)
    getter = getattr(core, "key_log", None)
    if not path or getter is None:
        return
    state = getter()
    session_id = core.session_id
    if state is None or session_id is None:
        return
    try:
        local, peer = sock.getsockname()[:2], sock.getpeername()[:2]
    except OSError:  # already reset: the keys were logged when they appeared
        return
    aead_id, sending, receiving = state
    for direction, src, dst, (generation, key, nr) in (
        ("send", local, peer, sending), ("receive", peer, local, receiving)
    ):
        if (direction, generation) in logged:
            continue
        logged.add((direction, generation))
        line = tcpcrypt_line(session_id, src, dst, generation, aead_id, key, nr)
        _append(path, line.encode())
