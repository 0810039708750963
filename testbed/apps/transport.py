"""Every protocol arm the probe and the experiments know, loaded and registered.

Importing this module imports the arm modules, which register themselves in
testbed/apps/registry.py (the types and the table live there); callers that need the whole
table (``TRANSPORTS``, ``get_transport``) import it from here.
"""

from __future__ import annotations

from testbed.apps import (
    proto_syn,  # noqa: F401  (registers the SYN-data arms, RFC 8547 §4.7)
    proto_tcpcrypt,  # noqa: F401  (registers the tcpcrypt arms)
    proto_tls,  # noqa: F401  (registers the TLS arms)
)
from testbed.apps.registry import (
    POLICIES,
    TCP_FASTOPEN,
    TCP_FASTOPEN_CONNECT,
    TFO_QUEUE,
    TRANSPORTS,
    ConnInfo,
    EnoConn,
    EnoTransport,
    PlainConn,
    PlainTransport,
    conn_info,
    get_transport,
    register_transport,
)

__all__ = [
    "TCP_FASTOPEN",
    "TCP_FASTOPEN_CONNECT",
    "TFO_QUEUE",
    "ConnInfo",
    "PlainConn",
    "PlainTransport",
    "conn_info",
    "EnoConn",
    "EnoTransport",
    "TRANSPORTS",
    "POLICIES",
    "register_transport",
    "get_transport",
]
