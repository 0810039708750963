"""Byte vectors for the ENO codec (RFC 8547 §4.1-§4.4) and the generic TCP options codec.

The ENO vectors are the worked encodings of docs/protocols.md §1.7, each checked
by hand against RFC 8547 §4.1 (Figure 1: Len = N + 2), §4.2 (Figure 5) and §4.4
(Figure 6: length byte 0x80 | (len - 1)). They are derived, not RFC test vectors.
"""

from __future__ import annotations

import pytest

from testbed.eno import constants as c
from testbed.eno.errors import EnoEncodeError, EnoParseError, OptionSpaceError
from testbed.eno.option import (
    IMPLICIT_GLOBAL,
    EnoOption,
    GlobalSuboption,
    TepSuboption,
    encode_non_syn_eno,
    parse_eno,
    parse_eno_lenient,
    parse_eno_option,
)
from testbed.eno.tcp_options import (
    EndOfOptionList,
    Eno,
    Experimental,
    FastOpen,
    MalformedTail,
    MaxSegmentSize,
    NoOperation,
    RawOption,
    Sack,
    SackPermitted,
    TcpOption,
    Timestamps,
    WindowScale,
    append_eno,
    encode_options,
    find_eno,
    nonempty_fastopen,
    option_space_left,
    parse_options,
    parse_options_lenient,
    remove_eno,
)

RESUME_A = bytes(range(0x10, 0x19))  # resume[i]{0..8}, 9 bytes (RFC 8548 §3.5 Figure 2)
RESUME_B = bytes(range(0x20, 0x29))  # resume[i]{9..17}
NONCE_A = bytes(range(0xE0, 0xE8))  # 8-byte nonces
NONCE_B = bytes(range(0xF0, 0xF8))
# What Linux puts in a SYN: MSS 1460, SACK-permitted, timestamps, NOP, window scale 7.
LINUX_SYN = bytes.fromhex("020405b4" "0402" "080a0000000100000000" "01" "030307")

# (description, full ENO option bytes, the option built from suboptions)
VECTORS: list[tuple[str, bytes, EnoOption]] = [
    (
        "fresh: A's SYN, implicit global 0x00",
        bytes.fromhex("45042123"),
        EnoOption.build([0x21, 0x23]),
    ),
    (
        "fresh: B picks X25519",
        bytes.fromhex("45040123"),
        EnoOption.build([0x23], GlobalSuboption(b=True)),
    ),
    (
        "resumption offer last, data length from the option length",
        bytes.fromhex("451521a3") + RESUME_A + NONCE_A,
        EnoOption.build([0x21, TepSuboption(0x23, RESUME_A + NONCE_A)]),
    ),
    (
        "resumption offer mid-list, length byte 0x90 = 0x80 | (17 - 1)",
        bytes.fromhex("451690a3") + RESUME_A + NONCE_A + b"\x21",
        EnoOption.build([TepSuboption(0x23, RESUME_A + NONCE_A), 0x21]),
    ),
    (
        "B accepts resumption",
        bytes.fromhex("451501a3") + RESUME_B + NONCE_B,
        EnoOption.build([TepSuboption(0x23, RESUME_B + NONCE_B)], GlobalSuboption(b=True)),
    ),
    (
        "vacuous option (§4.6), nothing but kind and length",
        bytes.fromhex("4502"),
        EnoOption.build([]),
    ),
    (
        "passive vacuous option still carries b = 1 (§4.6)",
        bytes.fromhex("450301"),
        EnoOption.build([], GlobalSuboption(b=True)),
    ),
    (
        "a and b set, z bits zero (§4.2 Figure 5)",
        bytes.fromhex("45040323"),
        EnoOption.build([0x23], GlobalSuboption(b=True, a=True)),
    ),
    (
        "v = 1 TEP with empty data at the end",
        bytes.fromhex("4503a3"),
        EnoOption.build([TepSuboption(0x23, b"")]),
    ),
]


# ---------------------------------------------------------------------------
# ENO vectors, both directions
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "wire", "built"), VECTORS, ids=[v[0] for v in VECTORS])
def test_vector_encode(name: str, wire: bytes, built: EnoOption) -> None:
    assert built.encode() == wire


@pytest.mark.parametrize(("name", "wire", "built"), VECTORS, ids=[v[0] for v in VECTORS])
def test_vector_parse(name: str, wire: bytes, built: EnoOption) -> None:
    assert parse_eno_option(wire) == built
    assert parse_eno(wire[2:]) == built
    assert parse_eno_lenient(wire[2:]).strict() == built


def test_fresh_offer_fields() -> None:
    option = parse_eno(bytes.fromhex("2123"))
    assert option.explicit_global is None
    assert option.global_suboption == IMPLICIT_GLOBAL
    assert option.tep_ids == (0x21, 0x23)
    assert option.syn_tep == 0x23  # the last TEP id is the SYN TEP (§4.7)
    assert not option.vacuous


def test_resumption_suboption_fields() -> None:
    option = parse_eno(bytes.fromhex("90a3") + RESUME_A + NONCE_A + b"\x21")
    first, second = option.teps
    assert (first.tep_id, first.v, first.byte, first.explicit_length) == (0x23, True, 0xA3, True)
    assert first.data == RESUME_A + NONCE_A
    assert (second.tep_id, second.v, second.data) == (0x21, False, None)


def test_non_syn_form() -> None:
    assert encode_non_syn_eno() == bytes.fromhex("4502") == c.EMPTY_NON_SYN_ENO
    assert encode_non_syn_eno(b"\x01\x02") == bytes.fromhex("45040102")


@pytest.mark.parametrize("value", range(0x00, 0x20))
def test_every_global_byte_round_trips(value: int) -> None:
    option = parse_eno(bytes((value,)))
    global_ = option.global_suboption
    assert global_.byte == value
    assert global_.b == bool(value & 0x01)
    assert global_.a == bool(value & 0x02)
    assert global_.z == (value >> 2) & 0b111
    assert option.encode_body() == bytes((value,))


def test_only_first_global_counts() -> None:
    # §4.2: a receiver MUST ignore all but the first global suboption.
    option = parse_eno(bytes.fromhex("010021"))
    assert option.global_suboption == GlobalSuboption(b=True)
    assert len(option.suboptions) == 3
    assert option.encode_body() == bytes.fromhex("010021")


@pytest.mark.parametrize("tep", range(0x20, 0x80))
def test_every_tep_byte_without_data(tep: int) -> None:
    assert parse_eno(bytes((tep,))).teps == (TepSuboption(tep),)


@pytest.mark.parametrize("first", range(0xA0, 0x100, 0x0F))
def test_v_bit_tep_runs_to_end(first: int) -> None:
    option = parse_eno(bytes((first, 0x21, 0x01, 0x80)))
    assert option.teps == (TepSuboption(first & 0x7F, b"\x21\x01\x80"),)


@pytest.mark.parametrize("size", [1, 2, 17, 32])
def test_length_byte_sizes(size: int) -> None:
    data = bytes(range(size))
    body = bytes((0x80 | (size - 1), 0xA3)) + data + b"\x21"
    option = parse_eno(body)
    assert option.teps[0] == TepSuboption(0x23, data, explicit_length=True)
    assert option.encode_body() == body


def test_last_suboption_may_exceed_32_bytes() -> None:
    data = bytes(range(35))  # §4.4: only the last suboption can exceed 32 bytes
    option = EnoOption.build([TepSuboption(0x23, data)])
    assert option.encode() == bytes((0x45, 38, 0xA3)) + data
    assert parse_eno(option.encode_body()) == option


def test_repeated_tep_id_is_kept() -> None:
    option = parse_eno(bytes.fromhex("81a3aaaa") + b"\xa3\x01")
    assert [s.tep_id for s in option.teps] == [0x23, 0x23]
    assert len(option.suboptions_for(0x23)) == 2


# ---------------------------------------------------------------------------
# Strict parse: every malformation (RFC 8547 §4.4) raises EnoParseError
# ---------------------------------------------------------------------------

MALFORMED = [
    ("length byte is the only byte", "80"),
    ("length byte is the last byte", "2185"),
    ("length byte then v=0 TEP id (0x21)", "802100"),
    ("length byte then global suboption", "8001a3"),
    ("length byte then length byte", "809fa300"),
    ("length byte then 0x9f, the top of the banned range", "809f00"),
    ("data overruns the option by one byte", "81a300"),
    ("32 data bytes announced, 31 present", "9fa3" + "00" * 31),
    ("overrun after valid suboptions", "0121" + "83a3" + "0000"),
    ("more than fits in a TCP header (39 > 38 bytes)", "21" * 39),
]


@pytest.mark.parametrize(("name", "body"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_strict_rejects(name: str, body: str) -> None:
    raw = bytes.fromhex(body)
    with pytest.raises(EnoParseError):
        parse_eno(raw)
    # The lenient reader keeps every byte and names the problem instead.
    lenient = parse_eno_lenient(raw)
    assert lenient.error is not None and not lenient.well_formed
    assert lenient.encode_body() == raw
    with pytest.raises(EnoParseError):
        lenient.strict()


def test_lenient_keeps_what_it_could_read() -> None:
    lenient = parse_eno_lenient(bytes.fromhex("01218500"))
    assert lenient.suboptions == (GlobalSuboption(b=True), TepSuboption(0x21))
    assert lenient.tail == bytes.fromhex("8500")
    assert lenient.global_suboption.b  # an observer can still see the role bit
    assert lenient.encode() == bytes.fromhex("450601218500")


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x45", bytes.fromhex("4603"), bytes.fromhex("450421"), bytes.fromhex("45032123")],
    ids=["empty", "kind only", "wrong kind", "length claims more", "length claims less"],
)
def test_parse_eno_option_checks_kind_and_length(raw: bytes) -> None:
    with pytest.raises(EnoParseError):
        parse_eno_option(raw)


# ---------------------------------------------------------------------------
# Encoding refuses what cannot go on the wire
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("tep", [0x00, 0x1F, 0x80, 0xA3, -1])
def test_tep_id_range(tep: int) -> None:
    with pytest.raises(EnoEncodeError):
        TepSuboption(tep)


@pytest.mark.parametrize("size", [0, 33])
def test_length_byte_data_range(size: int) -> None:
    with pytest.raises(EnoEncodeError):
        TepSuboption(0x23, bytes(size), explicit_length=True)
    with pytest.raises(EnoEncodeError):
        TepSuboption(0x23, None, explicit_length=True)


def test_data_without_length_byte_must_be_last() -> None:
    option = EnoOption((TepSuboption(0x23, b"\x01"), TepSuboption(0x21)))
    with pytest.raises(EnoEncodeError):
        option.encode()


def test_build_adds_length_bytes_and_refuses_long_mid_data() -> None:
    built = EnoOption.build([TepSuboption(0x23, b"\x01\x02"), 0x21])
    assert built.encode_body() == bytes.fromhex("81a3010221")
    with pytest.raises(EnoEncodeError):
        EnoOption.build([TepSuboption(0x23, bytes(33)), 0x21])


def test_syn_form_limited_to_38_content_bytes() -> None:
    assert len(EnoOption.build([TepSuboption(0x23, bytes(37))]).encode()) == 40
    with pytest.raises(EnoEncodeError):
        EnoOption.build([TepSuboption(0x23, bytes(38))]).encode()


def test_global_suboption_ranges() -> None:
    with pytest.raises(EnoEncodeError):
        GlobalSuboption(z=8)
    with pytest.raises(EnoEncodeError):
        GlobalSuboption.from_byte(0x20)
    assert GlobalSuboption(z=0b111).byte == 0x1C


def test_non_syn_contents_limit() -> None:
    with pytest.raises(EnoEncodeError):
        encode_non_syn_eno(bytes(254))


# ---------------------------------------------------------------------------
# Generic TCP options codec: kind -> codec, unknown kinds survive
# ---------------------------------------------------------------------------

OPTION_VECTORS = [
    ("EOL with padding", "000000", EndOfOptionList(b"\x00\x00")),
    ("NOP", "01", NoOperation()),
    ("MSS 1460", "020405b4", MaxSegmentSize(1460)),
    ("window scale 7", "030307", WindowScale(7)),
    ("SACK permitted", "0402", SackPermitted()),
    ("SACK one block", "050a0000000100000002", Sack(((1, 2),))),
    ("timestamps", "080a0000000100000002", Timestamps(1, 2)),
    ("TFO cookie request", "2202", FastOpen()),
    ("TFO 8-byte cookie", "220a0102030405060708", FastOpen(bytes(range(1, 9)))),
    ("legacy ENO, kind 253 ExID 0x454E (§11)", "fd04454e", Experimental(253, c.LEGACY_ENO_EXID)),
    ("experimental 254 with data", "fe06f98901ff", Experimental(254, 0xF989, b"\x01\xff")),
    ("ENO", "45042123", Eno(bytes.fromhex("2123"))),
    ("unknown kind 99", "6304abcd", RawOption(99, b"\xab\xcd")),
    ("unknown kind, empty", "1e02", RawOption(30, b"")),
]


@pytest.mark.parametrize(
    ("name", "wire", "option"), OPTION_VECTORS, ids=[v[0] for v in OPTION_VECTORS]
)
def test_tcp_option_vectors(name: str, wire: str, option: TcpOption) -> None:
    raw = bytes.fromhex(wire)
    assert parse_options(raw) == (option,)
    assert parse_options_lenient(raw) == (option,)
    assert encode_options([option]) == raw


def test_linux_syn_block() -> None:
    options = parse_options(LINUX_SYN)
    assert options == (
        MaxSegmentSize(1460),
        SackPermitted(),
        Timestamps(1, 0),
        NoOperation(),
        WindowScale(7),
    )
    assert encode_options(options) == LINUX_SYN
    assert option_space_left(LINUX_SYN) == 20


def test_sack_four_blocks() -> None:
    blocks = ((1, 2), (3, 4), (5, 6), (7, 8))
    raw = Sack(blocks).encode()
    assert raw[:2] == bytes((5, 34))
    assert parse_options(raw) == (Sack(blocks),)


def test_eno_option_in_block_reads_syn_form() -> None:
    (eno,) = find_eno(LINUX_SYN + bytes.fromhex("45040123"))
    assert eno.syn_form() == EnoOption.build([0x23], GlobalSuboption(b=True))
    assert eno.syn_form_lenient().well_formed


BAD_BLOCKS = [
    ("kind without length", "02"),
    ("length below 2", "6301"),
    ("length zero", "4500"),
    ("length past the end", "020405"),
    ("MSS of length 3", "020305"),
    ("window scale of length 4", "03040700"),
    ("SACK-permitted of length 3", "040300"),
    ("SACK without blocks", "0502"),
    ("SACK with 7-byte block", "0509" + "00" * 7),
    ("timestamps of length 8", "0808" + "00" * 6),
    ("TFO of length 3", "220301"),
    ("TFO cookie of 2 bytes", "22040102"),
    ("TFO odd length", "220701020304ff"),
    ("TFO cookie of 18 bytes", "2214" + "00" * 18),
    ("experimental without ExID", "fd03ff"),
    ("non-zero byte after EOL", "000001"),
    ("block over 40 bytes", "01" * 41),
]


@pytest.mark.parametrize(("name", "wire"), BAD_BLOCKS, ids=[b[0] for b in BAD_BLOCKS])
def test_strict_options_reject_and_lenient_round_trips(name: str, wire: str) -> None:
    raw = bytes.fromhex(wire)
    with pytest.raises(EnoParseError):
        parse_options(raw)
    assert encode_options(parse_options_lenient(raw)) == raw


def test_lenient_marks_damage() -> None:
    parsed = parse_options_lenient(bytes.fromhex("020405b4" "020305" "0805"))
    assert parsed[0] == MaxSegmentSize(1460)
    assert parsed[1] == RawOption(2, b"\x05")  # known kind, impossible length: kept raw
    assert parsed[2] == MalformedTail(bytes.fromhex("0805"))


# ---------------------------------------------------------------------------
# Raw block editing for the hook: append, remove, space
# ---------------------------------------------------------------------------


def test_append_to_linux_syn() -> None:
    eno = bytes.fromhex("45042123")
    out = append_eno(LINUX_SYN, eno)
    assert out == LINUX_SYN + eno  # 24 bytes: already a multiple of 4
    assert parse_options(out)[-1] == Eno(bytes.fromhex("2123"))


def test_append_pads_with_eol() -> None:
    out = append_eno(bytes.fromhex("020405b4"), bytes.fromhex("450301"))
    assert out == bytes.fromhex("020405b4" "450301" "00")
    assert len(out) % 4 == 0


def test_append_drops_old_eol_and_padding() -> None:
    out = append_eno(bytes.fromhex("020405b4" "00000000"), bytes.fromhex("45040123"))
    assert out == bytes.fromhex("020405b4" "45040123")


def test_append_copies_unknown_bytes_verbatim() -> None:
    block = bytes.fromhex("6304abcd" "020305" "01")  # unknown kind + a bad-length MSS
    assert append_eno(block, bytes.fromhex("4502")).startswith(block)


def test_append_refuses() -> None:
    full = LINUX_SYN + bytes.fromhex("050a0000000100000002") + bytes.fromhex("01" * 10)
    assert len(full) == 40 and option_space_left(full) == 0
    with pytest.raises(OptionSpaceError):
        append_eno(full, bytes.fromhex("4502"))
    with pytest.raises(OptionSpaceError):
        append_eno(LINUX_SYN, bytes((0x45, 22)) + bytes(20))
    with pytest.raises(EnoEncodeError):
        append_eno(bytes.fromhex("4502"), bytes.fromhex("4502"))  # one ENO per SYN (§4.1)
    with pytest.raises(EnoParseError):
        append_eno(bytes.fromhex("0205"), bytes.fromhex("4502"))
    with pytest.raises(EnoEncodeError):
        append_eno(b"", bytes.fromhex("4503"))  # not an encoded option


def test_append_exactly_fills_40_bytes() -> None:
    eno = EnoOption.build([TepSuboption(0x23, bytes(17))]).encode()
    assert len(eno) == 20
    assert len(append_eno(LINUX_SYN, eno)) == 40


def test_remove_eno_shrinks_and_repads() -> None:
    block = bytes.fromhex("020405b4" "450301" "01" "030307" "00")
    assert remove_eno(block) == bytes.fromhex("020405b4" "01" "030307")
    assert remove_eno(LINUX_SYN + bytes.fromhex("45042123")) == LINUX_SYN


def test_remove_eno_keep_length_nops_it_out() -> None:
    block = LINUX_SYN + bytes.fromhex("45042123")
    out = remove_eno(block, keep_length=True)
    assert out == LINUX_SYN + bytes.fromhex("01010101")
    assert not find_eno(out)


def test_remove_every_eno_and_nothing_else() -> None:
    block = bytes.fromhex("4502" "0402" "450321" "6304abcd")
    assert remove_eno(block) == bytes.fromhex("0402" "6304abcd" "0000")
    assert len(find_eno(block)) == 2


def test_space_and_tfo_helpers() -> None:
    assert option_space_left(b"") == 40
    assert option_space_left(bytes.fromhex("020405b4" "00000000")) == 36
    assert option_space_left(bytes(40)) == 40  # all padding: nothing in use
    assert nonempty_fastopen(bytes.fromhex("220a0102030405060708"))
    assert not nonempty_fastopen(bytes.fromhex("2202"))
