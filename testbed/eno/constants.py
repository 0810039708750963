"""Every TCP-ENO and TCP option constant the ENO layer uses, in one place.

Each value cites the section of the RFC that defines it. RFC 8547 is TCP-ENO;
the generic TCP option kinds come from RFC 9293 (base TCP), RFC 7323 (window
scale, timestamps), RFC 2018 (SACK), RFC 7413 (TCP Fast Open) and RFC 6994
(shared experimental options).
"""

from __future__ import annotations

from typing import Final

# ---------------------------------------------------------------------------
# The ENO option itself (RFC 8547 §4.1, Figure 1; kind assigned in §11)
# ---------------------------------------------------------------------------

ENO_KIND: Final = 69  # §11 Table 2: "Encryption Negotiation (TCP-ENO)"
OPTION_HEADER_LEN: Final = 2  # kind byte + length byte (§4.1 Figure 1: Len = N + 2)
MAX_OPTION_LEN: Final = 255  # the TCP length byte is 8 bits, so one option is at most 255 bytes
MAX_OPTION_BODY: Final = MAX_OPTION_LEN - OPTION_HEADER_LEN  # 253 content bytes

# The TCP header holds at most 40 bytes of options (§4.4, last paragraph; RFC 9293 §3.1:
# data offset is 4 bits of 32-bit words, 15 * 4 - 20 = 40).
MAX_TCP_OPTIONS_LEN: Final = 40
# So a SYN-form ENO option alone can carry at most 38 content bytes (§4.4); fewer beside MSS,
# SACK-permitted, window scale and timestamps.
MAX_SYN_ENO_BODY: Final = MAX_TCP_OPTIONS_LEN - OPTION_HEADER_LEN
TCP_OPTIONS_ALIGN: Final = 4  # options are padded to a multiple of 32 bits (RFC 9293 §3.1)

# Non-SYN-form ENO option (§4.1 Figure 3): unless the negotiated TEP gives its contents a meaning
# they MUST be empty when sent, so the active opener's third segment carries exactly these bytes.
EMPTY_NON_SYN_ENO: Final = bytes((ENO_KIND, OPTION_HEADER_LEN))  # 45 02

# ---------------------------------------------------------------------------
# Initial suboption byte (§4.1 Figure 4, Table 1): bit 7 = v, bits 6..0 = glt
# ---------------------------------------------------------------------------

V_BIT: Final = 0x80  # v = 1: variable-length suboption data follows (or: a length byte)
GLT_MASK: Final = 0x7F  # glt: Global suboption, Length, or TEP identifier
TEP_ID_MIN: Final = 0x20  # glt >= 0x20 is a TEP identifier (Table 1, the "t" in glt)
TEP_ID_MAX: Final = 0x7F
GLOBAL_MAX: Final = 0x1F  # v = 0, glt < 0x20: global suboption, 0x00-0x1f (§4.2)

# Length byte (§4.4 Figure 6): "1 0 0 nnnnn" = 0x80-0x9f; data length is nnnnn + 1 (1..32 bytes)
LENGTH_BYTE_MIN: Final = 0x80
LENGTH_BYTE_MAX: Final = 0x9F
LENGTH_BYTE_MASK: Final = 0x1F  # nnnnn
MIN_LENGTH_BYTE_DATA: Final = 1
MAX_LENGTH_BYTE_DATA: Final = 32
# §4.4 rule 2: the byte after a length byte MUST be a TEP id with v = 1, i.e. 0xa0 or higher;
# anything in 0x00-0x9f makes the whole option ill-formed.
MIN_BYTE_AFTER_LENGTH: Final = V_BIT | TEP_ID_MIN  # 0xa0

# Global suboption bits (§4.2 Figure 5): 0 0 0 z1 z2 z3 a b
GLOBAL_B_BIT: Final = 0x01  # passive role bit: 1 for passive openers (and B in simultaneous open)
GLOBAL_A_BIT: Final = 0x02  # application-aware bit
GLOBAL_Z_SHIFT: Final = 2  # z1 z2 z3 occupy bits 4..2; MUST be sent as 0, ignored on receipt
GLOBAL_Z_MASK: Final = 0x1C
IMPLICIT_GLOBAL: Final = 0x00  # a SYN without a global suboption implies 0x00 (§4.2)

# TEP identifier registry (§11 Table 3; tcpcrypt ids from RFC 8548 §7)
TEP_EXPERIMENTAL: Final = 0x20  # "Experimental Use"
TEP_TCPCRYPT_ECDHE_P256: Final = 0x21
TEP_TCPCRYPT_ECDHE_P521: Final = 0x22
TEP_TCPCRYPT_ECDHE_CURVE25519: Final = 0x23
TEP_TCPCRYPT_ECDHE_CURVE448: Final = 0x24
TEP_RESERVED_EXTENDED_MIN: Final = 0x70  # 0x70-0x7f reserved for extended values (§11)

# Pre-RFC ENO used the RFC 6994 experimental kind 253 with this 16-bit ExID (§11). A segment
# MUST NOT carry it together with kind 69; it is not ENO for a compliant receiver.
LEGACY_ENO_EXID: Final = 0x454E

# ---------------------------------------------------------------------------
# Generic TCP option kinds and their fixed lengths (whole option, kind and length included)
# ---------------------------------------------------------------------------

KIND_EOL: Final = 0  # End of Option List, one byte, no length (RFC 9293 §3.1)
KIND_NOP: Final = 1  # No-Operation, one byte, no length (RFC 9293 §3.1)
KIND_MSS: Final = 2  # Maximum Segment Size (RFC 9293 §3.1)
KIND_WSCALE: Final = 3  # Window Scale (RFC 7323 §2.2)
KIND_SACK_PERMITTED: Final = 4  # SACK-Permitted (RFC 2018 §2)
KIND_SACK: Final = 5  # SACK blocks (RFC 2018 §3)
KIND_TIMESTAMPS: Final = 8  # Timestamps (RFC 7323 §3.2)
KIND_FASTOPEN: Final = 34  # TCP Fast Open cookie (RFC 7413 §4.1.1)
KIND_EXPERIMENT_1: Final = 253  # shared experimental options (RFC 6994 §3)
KIND_EXPERIMENT_2: Final = 254

LEN_MSS: Final = 4
LEN_WSCALE: Final = 3
LEN_SACK_PERMITTED: Final = 2
LEN_TIMESTAMPS: Final = 10
SACK_BLOCK_LEN: Final = 8  # each SACK block is two 32-bit sequence numbers (RFC 2018 §3)
MAX_WSCALE_SHIFT: Final = 14  # RFC 7323 §2.3: larger shifts are treated as 14, still well-formed

# RFC 7413 §4.1.1: length 2 (empty cookie = cookie request) or 6..18 and even (4..16-byte cookie)
TFO_REQUEST_LEN: Final = 2
TFO_MIN_COOKIE: Final = 4
TFO_MAX_COOKIE: Final = 16

# RFC 6994 §3: an experimental option carries an ExID of 16 (or 32) bits after kind and length.
EXID_LEN: Final = 2
MIN_EXPERIMENT_LEN: Final = OPTION_HEADER_LEN + EXID_LEN
