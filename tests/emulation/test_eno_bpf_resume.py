"""Passive resumption answers in the kernel program (RFC 8548 §3.5, testbed/eno/bpf):
single use, only for the SYN whose suboption data begins with the key, never expired, and
never for an offer that is malformed, too short or repeated; then tcpcrypt-resume end to
end on the bpf datapath, checked on the wire."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

import topologies
from testbed.eno.bpf import maps
from testbed.eno.bpf.attach import ids_file, support_problem
from testbed.net.network import Network
from testbed.net.pcap import options_of
from testbed.workload import Workload, run_workload
from tests.emulation.eno_support import RAW_PEER, run_script
from tests.emulation.test_eno_bpf import options_of_hex
from tests.emulation.test_eno_hook import ENO_KIND, eno_conns, handshake, syn_options

pytestmark = pytest.mark.skipif(support_problem() is not None,
                                reason=f"no bpf datapath here: {support_problem()}")
PORT, TEP = 5000, 0x20  # the eno-test server's listener and TEP
FRESH = "45040120"  # the listener's own answer (b = 1, TEP 0x20)
KEYS = {name: bytes([n]) * 9 for n, name in enumerate(
    ["used", "expired", "length byte", "long", "slot", "short"], start=1)}
KEYS["shortest"] = KEYS["long"][:4]  # a 4-byte key that begins "long": tried first


def answer_option(name: str) -> bytes:
    """A distinct answer per key: b = 1, TEP 0x20 with v = 1, a marker and the name's byte."""
    return bytes([0x45, 16, 0x01, 0xA0]) + b"answer" + KEYS[name][:1] * 6


def offer(data: bytes, before: str = "") -> str:
    """A's SYN options: the kernel's 20 bytes, then ENO with ``data`` for TEP 0x20 last."""
    body = bytes.fromhex(before) + bytes([0xA0]) + data
    return syn_options((bytes([ENO_KIND, 2 + len(body)]) + body).hex())


CASES = {  # in order: name -> SYN options; the answer key each should use, or None
    "resumption offer": (offer(KEYS["used"] + b"\xaa" * 8), "used"),
    "the same offer again (single use)": (offer(KEYS["used"] + b"\xaa" * 8), None),
    "expired answer": (offer(KEYS["expired"] + b"\xaa" * 8), None),
    "data shorter than the key (§3.5: a fresh offer)": (offer(KEYS["short"][:5]), None),
    # TEP 0x20 twice, the first with a length byte (§4.4): invalid (§4.5), no answer at all
    "duplicate suboptions": (syn_options("450e 88a0" + KEYS["short"].hex() + "20"), None),
    "length byte then another TEP": (syn_options("450e 88a0" + KEYS["length byte"].hex()
                                                 + "21"), "length byte"),
    "overrun length byte": (syn_options("450e 8fa0" + KEYS["long"].hex() + "20"), None),
    "shortest key first": (offer(KEYS["long"] + b"\xaa"), "shortest"),
    # data for TEP 0x60, 0x20 without: 0x60 shares 0x20's slot in the program, no answer
    "data of TEP 0x60 only": (syn_options("450d 20e0" + KEYS["slot"].hex()), None),
    "data fills the 40-byte option space": ("4528a0" + KEYS["long"].hex() + "bb" * 28,
                                            "long"),
}


def push_answers(net: Network) -> tuple[int, int]:
    """Answers straight into the server's maps, as a server process would push them."""
    ids = json.loads(ids_file(net.eno_bpf["server"].cgroup).read_text())
    listen_fd, answers_fd = maps.fd_by_id(ids["eno_listen"]), maps.fd_by_id(ids["eno_answers"])
    port = PORT.to_bytes(4, "little")
    value = bytearray(maps.lookup(listen_fd, port, maps.LISTEN_SIZE) or b"")
    assert value, "the server registered its listener"
    value[4:8] = (1 << 9 | 1 << 4).to_bytes(4, "little")  # 9- and 4-byte keys
    maps.update(listen_fd, port, bytes(value))
    now = time.monotonic_ns()
    for name, key in KEYS.items():
        deadline = now - 1 if name == "expired" else now + 60 * 10**9
        maps.update(answers_fd, maps.answer_key(PORT, TEP, key),
                    maps.pack_answer(deadline, answer_option(name)))
    return listen_fd, answers_fd


def test_kernel_answers_are_single_use_and_only_for_the_syn_that_names_them() -> None:
    cases = {name: {"syn": syn} for name, (syn, _) in CASES.items()}
    with Network(topologies.create("direct")) as net:
        net.set_eno_bpf("server", True)
        server = net.start_helper("server", "server", [
            sys.executable, "-m", "testbed.apps.server", "--proto", "eno-test"], ready="ready")
        fds = push_answers(net)
        try:
            seen = run_script(net, "client", RAW_PEER, net.ip("server"), net.ip("client"),
                              json.dumps(cases), timeout=60)
            left = {name for name, key in KEYS.items() if maps.lookup(
                fds[1], maps.answer_key(PORT, TEP, key), maps.ANSWER_FMT.size)}
        finally:
            for fd in fds:
                os.close(fd)
        net.stop_helper(server)
        after = run_workload(net, Workload(proto="eno-test", eno_datapath="bpf"))[0]
    for name, (_, used) in CASES.items():
        options = seen[name]["options"]
        if used is not None:
            assert answer_option(used).hex() in options, name
        elif name in ("duplicate suboptions", "overrun length byte"):
            assert not options_of_hex(options), name  # no usable offer: no ENO (§4.5, §4.4)
        else:
            assert options.endswith(FRESH), (name, options)
    # used or expired answers are gone; the others stay for the SYN that names them
    assert left == {"short", "slot"}
    assert after["bytes_ok"] and after["eno"] == "negotiated"


def test_tcpcrypt_resume_in_the_kernel(tmp_path: Path) -> None:
    pcap = tmp_path / "client.pcap"
    with Network(topologies.create("direct")) as net:
        records = run_workload(net, Workload(proto="tcpcrypt-resume", connections=3,
                                             eno_datapath="bpf"), pcap=pcap)
    assert [r["resumed"] for r in records] == [False, True, True]
    for r in records:
        assert (r["outcome"], r["eno_datapath"], r["error"]) == ("encrypted", "bpf", None), r
        assert r["bytes_ok"] and r["session_id"] == r["session_id_peer"]
        # §3.4, §3.5: the session ID starts with B's TEP byte, v = 1 when resumed
        assert r["session_id"][:2] == ("a3" if r["resumed"] else "23")
    assert [r["eno_option_bytes"] for r in records[1:]] == [[20, 20], [20, 20]]
    conns = eno_conns(pcap)
    assert len(conns) == 3
    for index, conn in enumerate(conns):
        syn, synack, ack = handshake(conn)
        (a_opt,), (b_opt,) = options_of(syn, ENO_KIND), options_of(synack, ENO_KIND)
        if index == 0:
            assert (a_opt, b_opt) == (b"\x23", b"\x01\x23"), "fresh: bare TEP ids"
            continue
        # A: TEP byte v = 1, its half, an 8-byte nonce; B: b = 1, v = 1, the other half,
        # a 7-byte nonce (40 option bytes: the kernel's 20 and ENO's 20)
        assert a_opt[0] == 0xA3 and len(a_opt) == 1 + 9 + 8
        assert b_opt[:2] == b"\x01\xa3" and len(b_opt) == 2 + 9 + 7
        assert len(synack.options_raw) == 40
        assert options_of(ack, ENO_KIND) == [b""], "A's third segment: empty non-SYN ENO"
