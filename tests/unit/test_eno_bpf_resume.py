"""Passive resumption on the bpf datapath (RFC 8548 §3.5): the answer map's layouts, the
answers the pure core builds for the kernel, and the replay of a handshake the kernel
answered from a pushed answer (testbed/eno/bpf/datapath.py). The kernel side runs in
tests/emulation/test_eno_bpf.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from testbed.eno.bpf import attach, datapath, maps
from testbed.eno.bpf.datapath import AnswerBook, judge
from testbed.eno.control import Settings

A, B = ("10.0.1.1", 40000), ("10.0.2.1", 5000)
SERVER = Settings(teps=((0x23, None),))  # tcpcrypt X25519, as the tcpcrypt-resume arm
HALF_A, HALF_B = bytes(range(1, 10)), bytes(range(11, 20))  # resume[i]{0..8}, {9..17}
NONCE_A, NONCE_B = b"\xaa" * 8, b"\xbb" * 7
# A's resumption offer (§3.5 Fig. 2): TEP byte with v = 1, its half, its nonce: 20 bytes
A_SYN = bytes([0x45, 20, 0xA3]) + HALF_A + NONCE_A
# B's answer: b = 1 (RFC 8547 §4.2), TEP byte v = 1, the other half, a 7-byte nonce
ANSWER = bytes([0x45, 20, 0x01, 0xA3]) + HALF_B + NONCE_B


def passive_record(mine: bytes, peer: bytes = A_SYN) -> maps.SockRecord:
    return maps.SockRecord(state=maps.ST_PASSIVE, peer_status=maps.PEER_OK, mine=mine,
                           peer=peer, flags=maps.F_ACK_ENO)


def fresh_answer() -> bytes:
    fresh = datapath._synack_for(SERVER.eno_config(), 0x23)
    assert fresh == bytes.fromhex("45040123")
    return fresh


def test_answer_layouts() -> None:
    key = maps.answer_key(5000, 0x23, HALF_B)
    assert key == (5000).to_bytes(4, "little") + bytes([0x23, 9, 0, 0]) + HALF_B + bytes(7)
    value = maps.pack_answer(123, ANSWER)
    assert value == (123).to_bytes(8, "little") + bytes([20]) + bytes(7) + ANSWER + bytes(44)
    assert len(value) == maps.ANSWER_FMT.size == 80
    with pytest.raises(ValueError, match="1 to 16"):
        maps.answer_key(5000, 0x23, bytes(17))
    with pytest.raises(ValueError, match="2 to 40"):
        maps.pack_answer(0, bytes(41))
    # the listener says which key lengths to try (bit n: n-byte keys)
    listen = maps.pack_listen([(0x23, fresh_answer())], False, key_lens=1 << 9)
    assert listen[:8] == bytes([1, 0, 0, 0]) + (1 << 9).to_bytes(4, "little")
    assert len(listen) == maps.LISTEN_SIZE == 8 + 8 * 66


@pytest.mark.skipif(shutil.which("bpftool") is None or not attach.OBJECT.exists(),
                    reason="needs bpftool and the compiled object (make setup)")
def test_answer_struct_sizes_match_the_compiled_object() -> None:
    dump = subprocess.run(["bpftool", "btf", "dump", "file", str(attach.OBJECT), "-j"],
                          capture_output=True, text=True, check=True)
    sizes = {t["name"]: t["size"] for t in json.loads(dump.stdout)["types"]
             if t["kind"] == "STRUCT"}
    assert sizes["answer_key"] == maps.ANSWER_KEY_FMT.size
    assert sizes["eno_answer"] == maps.ANSWER_FMT.size
    assert sizes["eno_listen"] == maps.LISTEN_SIZE


def test_the_core_builds_the_answer_and_refuses_one_that_does_not_fit() -> None:
    config = SERVER.eno_config()
    assert datapath._answer_option(config, 0x23, HALF_A, HALF_B + NONCE_B) == ANSWER
    # 20 option bytes are all Linux leaves a BPF program on a SYN-ACK: an 8-byte nonce is 21
    with pytest.raises(datapath.BpfDatapathError, match="does not fit"):
        datapath._answer_option(config, 0x23, HALF_A, HALF_B + NONCE_A)
    with pytest.raises(datapath.BpfDatapathError, match="does not negotiate"):
        datapath._answer_option(config, 0x21, HALF_A, HALF_B)
    assert len(HALF_B + NONCE_B) == datapath.ANSWER_DATA_ROOM


def book_with_answer() -> AnswerBook:
    book = AnswerBook()
    book.add((B[1], 0x23, HALF_A), HALF_B + NONCE_B, time.monotonic() + 60)
    return book


def test_a_pushed_answer_the_kernel_sent_resumes() -> None:
    book = book_with_answer()
    result = judge(passive_record(ANSWER), SERVER, active=False, local=B, remote=A,
                   answerer=book.answerer(B[1], ANSWER))
    assert (result.outcome, result.tep_id, result.error) == ("negotiated", 0x23, None)
    assert result.tep_byte == 0xA3  # §3.4: a resumed session ID starts with v = 1
    assert bytes.fromhex(result.local_data) == HALF_B + NONCE_B
    assert bytes.fromhex(result.peer_data) == HALF_A + NONCE_A
    assert result.transcript_bytes == A_SYN + ANSWER  # RFC 8547 §4.8
    assert len(book) == 0  # single use


def test_a_fresh_answer_is_always_allowed_and_uses_up_the_named_answer() -> None:
    # The kernel found the answer expired, or another SYN took it first: fresh exchange.
    book = book_with_answer()
    fresh = fresh_answer()
    result = judge(passive_record(fresh), SERVER, active=False, local=B, remote=A,
                   answerer=book.answerer(B[1], fresh))
    assert (result.outcome, result.tep_byte, result.error) == ("negotiated", 0x23, None)
    assert len(book) == 0


def test_a_resumption_answer_this_process_never_pushed_is_an_error() -> None:
    for book in (AnswerBook(), book_with_answer()):
        other = bytes([0x11]) * 9 + NONCE_A  # names no pushed answer
        peer = bytes([0x45, 20, 0xA3]) + other if len(book) else A_SYN
        result = judge(passive_record(ANSWER, peer), SERVER, active=False, local=B,
                       remote=A, answerer=book.answerer(B[1], ANSWER))
        assert result.error is not None and "SYN-ACK" in result.error


def test_answers_for_another_port_or_tep_do_not_match() -> None:
    book = book_with_answer()
    result = judge(passive_record(ANSWER), SERVER, active=False, local=(B[0], 5001),
                   remote=A, answerer=book.answerer(5001, ANSWER))
    assert result.error is not None
    assert len(book) == 1


def test_the_book_forgets_expired_and_oldest_answers() -> None:
    book = AnswerBook(limit=2)
    now = time.monotonic()
    book.add((1, 0x23, b"a"), b"x", now - 1)  # expired: gone at the next push
    book.add((1, 0x23, b"b"), b"x", now + 60)
    assert len(book) == 1
    book.add((1, 0x23, b"c"), b"x", now + 60)
    book.add((2, 0x23, b"d"), b"x", now + 60)  # beyond the limit: the oldest goes
    assert len(book) == 2
    assert book.drop_port(1) == [(1, 0x23, b"c")]
    book.remove((2, 0x23, b"d"))
    assert len(book) == 0
