"""A TEP's first message made while the SYN is on its way (``testbed/stream.py``'s active opener).

RFC 8547 §4.8 puts the negotiation transcript into a TEP only where keys or the session ID are
derived (tcpcrypt's ss0, RFC 8548 §3.3; the TLS session ID's exporter context), so role A's
first message (tcpcrypt Init1, a TLS ClientHello) does not depend on it. An active opener can
therefore make and start the most preferred TEP's core right after its SYN left, while it waits
a round trip for the SYN-ACK: the CPU of key generation and message building then overlaps the
network instead of sitting between the SYN-ACK and the first TEP segment, where the client's
host time is measured. A real implementation can do the same; nothing on the wire changes.

The prepared core is used only when the negotiation ends as it assumed (that TEP, role A, no
suboption data either way, so no resumption offer or answer); otherwise it is dropped unsent
and the stream makes the core from the ENO result as before. Providers opt in with
``early_options(spec, peer=...)``: the ``TepContext.options`` they would give role A without
the result, or None.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from typing import Any

from testbed.eno.control import Result
from testbed.streamconfig import Addr, StreamConfig
from testbed.tepio import TepDriver
from testbed.teps import base
from testbed.teps.base import Role, TepContext, TepError


class EarlyTep:
    """The preferred TEP's core, made and started while our SYN is on its way (role A);
    ``fits`` says whether the negotiation ended as it assumed (module docstring)."""

    def __init__(self, spec: base.TepSpec, ctx: TepContext, driver: TepDriver) -> None:
        self.spec, self.ctx, self.driver = spec, ctx, driver

    def fits(self, spec: base.TepSpec, role: Role, result: Result) -> bool:
        return (spec.tep_id == self.spec.tep_id and role is Role.A
                and not result.peer_data_bytes and not result.local_data)


def early_core(config: StreamConfig, sock: socket.socket, address: Addr) -> EarlyTep | None:
    """An ``EarlyTep`` core for the most preferred TEP, if its provider can give the options
    without the ENO result (``early_options``); None otherwise."""
    if config.passive_role or config.syn_data:
        return None
    specs = config.specs()
    provider = config.provider(specs[0].name) if specs else None
    method = getattr(provider, "early_options", None)
    if method is None:
        return None
    spec = specs[0]
    options: dict[str, Any] | None = method(spec, peer=address)
    if options is None:
        return None
    options = {**options, **config.tep_options.get(spec.name, {})}
    ctx = TepContext(role=Role.A, transcript=b"", random=os.urandom, now=time.monotonic(),
                     options=options)
    try:
        driver = TepDriver(sock, spec.factory(ctx))
        driver.start()
    except TepError:
        return None  # made again after the SYN-ACK, where the failure is reported
    return EarlyTep(spec, ctx, driver)


def connect_preparing(sock: socket.socket, address: Addr,
                       config: StreamConfig) -> EarlyTep | None:
    """connect() that makes the ``EarlyTep`` core while the SYN is on its way (one blocking
    wait for the handshake's end, no polling); the socket keeps its timeout."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    err = sock.connect_ex(address)
    if err not in (0, errno.EINPROGRESS):
        raise OSError(err, os.strerror(err))  # the errno's subclass (ConnectionRefusedError...)
    early = early_core(config, sock, address)
    if err == errno.EINPROGRESS:
        poller = select.poll()  # not select(): descriptors above 1023 are fine
        poller.register(sock, select.POLLOUT)
        if not poller.poll(None if timeout is None else timeout * 1e3):
            raise TimeoutError(f"connect to {address[0]}:{address[1]} timed out")
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
    sock.settimeout(timeout)
    return early
