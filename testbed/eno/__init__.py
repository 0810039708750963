"""TCP-ENO (RFC 8547): the pure option codec and negotiation core.

The NFQUEUE hook builds one ``EnoNegotiator`` per connection end and feeds it the raw
options block of each handshake segment; ``append_eno`` / ``remove_eno`` edit that block.
Nothing here touches a socket, a clock or a random source.
"""

from testbed.eno.config import EnoConfig, TepAnswerer, TepValidator, default_validator
from testbed.eno.errors import (
    EnoEncodeError,
    EnoError,
    EnoParseError,
    EnoStateError,
    LocalProtocolError,
    OptionSpaceError,
    RemoteProtocolError,
)
from testbed.eno.events import (
    Aborted,
    AbortReason,
    DiscardReason,
    EnoEvent,
    Fallback,
    FallbackReason,
    Negotiated,
    Outcome,
    SynDataAccepted,
    SynDataDiscarded,
)
from testbed.eno.negotiation import EnoNegotiator, State, Trigger
from testbed.eno.option import (
    EnoOption,
    GlobalSuboption,
    LenientEno,
    TepSuboption,
    encode_non_syn_eno,
    parse_eno,
    parse_eno_lenient,
    parse_eno_option,
)
from testbed.eno.tcp_options import (
    Eno,
    append_eno,
    encode_options,
    find_eno,
    option_space_left,
    parse_options,
    parse_options_lenient,
    remove_eno,
)

__all__ = [
    "AbortReason",
    "Aborted",
    "DiscardReason",
    "Eno",
    "EnoConfig",
    "EnoEncodeError",
    "EnoError",
    "EnoEvent",
    "EnoNegotiator",
    "EnoOption",
    "EnoParseError",
    "EnoStateError",
    "Fallback",
    "FallbackReason",
    "GlobalSuboption",
    "LenientEno",
    "LocalProtocolError",
    "Negotiated",
    "OptionSpaceError",
    "Outcome",
    "RemoteProtocolError",
    "State",
    "SynDataAccepted",
    "SynDataDiscarded",
    "TepAnswerer",
    "TepSuboption",
    "TepValidator",
    "Trigger",
    "append_eno",
    "default_validator",
    "encode_non_syn_eno",
    "encode_options",
    "find_eno",
    "option_space_left",
    "parse_eno",
    "parse_eno_lenient",
    "parse_eno_option",
    "parse_options",
    "parse_options_lenient",
    "remove_eno",
]
