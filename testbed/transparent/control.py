"""The session-ID query of a host's transparent proxy (RFC 8547 §5.1 for applications that
never saw the stream API): one JSON line asks for a local 4-tuple, one JSON line answers.

The socket is abstract (``@tcpinc-transparent`` unless named otherwise), so it exists per
network namespace: an application asks the proxy of its own host. Either 4-tuple of a
relayed connection answers: the one the application's socket has (its local address and the
peer it connected to, or on a server host the address the proxy connected from) and the one
on the network. The answer carries ``session_id`` (hex, None after a fallback), ``tep``,
``outcome``, ``fallback_reason`` and both 4-tuples.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from testbed.errors import ConfigError, TestbedError

DEFAULT_NAME = "tcpinc-transparent"
MAX_LINE = 4096
Addr = tuple[str, int]


class ProxyUnavailableError(TestbedError):
    """No transparent proxy answers in this network namespace."""


def key(local: Addr, remote: Addr) -> str:
    return f"{local[0]}:{local[1]}>{remote[0]}:{remote[1]}"


def parse_addr(text: str) -> Addr:
    """``IP:PORT`` -> (ip, port); ConfigError naming the problem otherwise."""
    host, sep, port = text.rpartition(":")
    try:
        socket.inet_aton(host)
        number = int(port)
    except (OSError, ValueError):
        number = -1
    if not sep or not 0 < number < 65536:
        raise ConfigError(f"bad address {text!r}", "give IPv4:PORT, e.g. 10.0.1.1:40000")
    return host, number


def query(local: Addr, remote: Addr, name: str = DEFAULT_NAME,
          timeout: float = 5.0) -> dict[str, Any]:
    """Ask this namespace's proxy about ``local`` -> ``remote``; the reply's ``found`` says
    whether the proxy relays (or relayed) that connection."""
    return _ask({"local": list(local), "remote": list(remote)}, name, timeout)


def wait_idle(wait: float = 10.0, name: str = DEFAULT_NAME) -> dict[str, Any]:
    """Block until this namespace's proxy has ended every connection it accepted and written
    its record (``idle`` true), or ``wait`` seconds passed (``idle`` false, ``open`` says how
    many are left)."""
    return _ask({"idle": wait}, name, wait + 5.0)


def idle_request(line: bytes) -> float | None:
    """The wait of an idle request line; None for any other request."""
    message = json.loads(line)
    if isinstance(message, dict) and "idle" in message:
        wait = float(message["idle"])
        if not 0 <= wait <= 600:
            raise ValueError("idle wait outside 0..600 s")
        return wait
    return None


def _ask(message: dict[str, Any], name: str, timeout: float) -> dict[str, Any]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect("\0" + name)
        except OSError as exc:
            raise ProxyUnavailableError(
                f"no transparent proxy on @{name} in this host: {exc}",
                "run inside a host started with --transparent") from None
        sock.sendall(json.dumps(message).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(MAX_LINE)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    reply: dict[str, Any] = json.loads(data)
    return reply


def parse_request(line: bytes) -> str:
    """The session-table key a request line asks for (ValueError if malformed)."""
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("request is not a JSON object")
    local, remote = message.get("local"), message.get("remote")
    if not (isinstance(local, list) and isinstance(remote, list)
            and len(local) == 2 and len(remote) == 2):
        raise ValueError("request needs local and remote as [ip, port]")
    return key((str(local[0]), int(local[1])), (str(remote[0]), int(remote[1])))


if __name__ == "__main__":  # python -m testbed.transparent.control idle [WAIT [NAME]]
    import sys

    if sys.argv[1:2] != ["idle"]:
        sys.exit("usage: python -m testbed.transparent.control idle [WAIT [NAME]]")
    print(json.dumps(wait_idle(float(sys.argv[2]) if len(sys.argv) > 2 else 10.0,
                               *sys.argv[3:4])))
