"""The one exception hierarchy of the ENO layer.

``EnoError`` is the base. ``RemoteProtocolError`` (and its ``EnoParseError``) means bytes
from the wire broke RFC 8547 or the TCP option format; ``LocalProtocolError`` means this
end asked for something the protocol forbids (an unencodable option, an event that is
illegal in the current state). Note that most *peer* misbehaviour during negotiation is
not an exception at all: RFC 8547 §4.6 turns it into a fallback to plain TCP.
"""

from __future__ import annotations

from typing import TypeVar

_T = TypeVar("_T")


class EnoError(Exception):
    """Base of every error raised by testbed.eno."""


class RemoteProtocolError(EnoError):
    """Bytes received from the peer (or the path) broke the protocol."""


class EnoParseError(RemoteProtocolError):
    """An ENO option or a TCP options block is malformed (RFC 8547 §4.4, RFC 9293 §3.1)."""


class LocalProtocolError(EnoError):
    """This end used the ENO layer wrongly."""


class EnoEncodeError(LocalProtocolError):
    """A value cannot be put on the wire (out-of-range field, option too long...)."""


class OptionSpaceError(EnoEncodeError):
    """The TCP header has no room left for the option (40 bytes at most, RFC 8547 §4.4)."""


class EnoStateError(LocalProtocolError):
    """An event that the negotiation state machine does not allow in its current state."""


def known(value: _T | None, what: str) -> _T:
    """``value``, which the negotiator's state implies is known; EnoStateError if it is not
    (the negotiator's error boundary then leaves it in ERROR, as for any illegal event)."""
    if value is None:
        raise EnoStateError(f"{what} is not known in this state")
    return value
