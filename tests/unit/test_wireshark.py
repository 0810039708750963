"""The Wireshark dissector (tools/wireshark/tcpinc.lua) run by tshark over committed captures.

tests/data/arms/ holds one small probe capture per protocol arm (`tcpinc probe --rtt 10ms
--response-size 256 --keylog`), the client's records and its key logs. Decoded fields are
checked against what this project's own Python code reads from the same bytes: the ENO
parser (testbed/eno/option.py), the tcpcrypt traffic keys (testbed/teps/tcpcrypt/keys.py)
and the workload's request format (testbed/apps/wire.py).
"""

from __future__ import annotations

import json
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from testbed.apps.wire import encode_request
from testbed.eno.errors import EnoParseError
from testbed.eno.option import parse_eno
from testbed.net.pcap import PcapReader, TcpFlag
from testbed.teps.tcpcrypt.constants import DEFAULT_AEADS
from testbed.teps.tcpcrypt.keys import TrafficKey
from tests.eno_segments import segment
from tests.unit.test_eno_fuzz import _inputs

ROOT = Path(__file__).resolve().parents[2]
LUA = ROOT / "tools" / "wireshark" / "tcpinc.lua"
ARMS = ROOT / "tests" / "data" / "arms"
ARM_NAMES = sorted(p.stem for p in ARMS.glob("*.pcap"))
REQUEST_SIZE, RESPONSE_SIZE = 12, 256  # what the committed probes ran with

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None,
                                reason="tshark missing: run `make setup`")


def tshark(pcap: Path, *args: str, tcpcrypt_keys: Path | None = None,
           tls_keys: Path | None = None) -> str:
    argv = ["tshark", "-n", "-X", f"lua_script:{LUA}",
            "-o", "tcp.reassemble_out_of_order:TRUE", "-r", str(pcap)]
    if tcpcrypt_keys is not None:
        argv += ["-o", f"tcpcrypt.keylog_file:{tcpcrypt_keys}"]
    if tls_keys is not None:
        argv += ["-o", f"tls.keylog_file:{tls_keys}"]
    proc = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Lua Error" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc.stdout


def fields(pcap: Path, names: list[str], *args: str, **keys: Path | None) -> list[list[str]]:
    argv = ["-T", "fields", "-E", "separator=|", *args]
    for name in names:
        argv += ["-e", name]
    out = tshark(pcap, *argv, **keys)
    return [line.split("|") for line in out.splitlines()]


def keylogs(arm: str) -> dict[str, Path | None]:
    tcpcrypt, tls = ARMS / f"{arm}.tcpcrypt-keylog", ARMS / f"{arm}.sslkeylog"
    return {"tcpcrypt_keys": tcpcrypt if tcpcrypt.exists() else None,
            "tls_keys": tls if tls.exists() else None}


def records(arm: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in (ARMS / f"{arm}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def all_arms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every arm's capture in one file (mergecap -a) and every key log in one of each kind,
    so the whole corpus costs one tshark run per question."""
    tmp = tmp_path_factory.mktemp("arms")
    merged = tmp / "all.pcap"
    subprocess.run(["mergecap", "-a", "-F", "pcap", "-w", str(merged),
                    *(str(ARMS / f"{a}.pcap") for a in ARM_NAMES)], check=True)
    out = {"pcap": merged}
    for kind in ("tcpcrypt-keylog", "sslkeylog"):
        path = tmp / f"all.{kind}"
        path.write_text("".join(p.read_text() for p in sorted(ARMS.glob(f"*.{kind}"))))
        out[kind] = path
    return out


DECODED = ["frame.number", "tcp.srcport", "tcp.dstport", "tcp.flags.syn", "tcp.flags.ack",
           "tcpeno.tep", "tcpeno.v", "tcpeno.b", "tcpeno.subdata", "tcpeno.resume_nonce",
           "tcpeno.negotiated_tep", "tcpcrypt.message", "tcpcrypt.cipher", "tcpcrypt.n_a",
           "tcpcrypt.pub", "tcpcrypt.data_len", "tcpcrypt.data", "tls.record.opaque_type",
           "tls.record.content_type", "data.data", "_ws.expert.message"]


def _rows(table: list[list[str]]) -> list[dict[str, str]]:
    return [dict(zip(DECODED, row, strict=True)) for row in table]


@pytest.fixture(scope="module")
def decoded(all_arms: dict[str, Path]) -> list[dict[str, str]]:
    """Every frame of every arm, decoded with the key logs (one tshark run)."""
    return _rows(fields(all_arms["pcap"], DECODED, tcpcrypt_keys=all_arms["tcpcrypt-keylog"],
                        tls_keys=all_arms["sslkeylog"]))


@pytest.fixture(scope="module")
def bare(all_arms: dict[str, Path]) -> list[dict[str, str]]:
    """The same without key logs."""
    return _rows(fields(all_arms["pcap"], DECODED))


def of_arm(rows: list[dict[str, str]], arm: str) -> list[dict[str, str]]:
    """The rows of ``arm``'s connections (by the client ports its records name)."""
    ports = {str(r["local_port"]) for r in records(arm)}
    return [r for r in rows if r["tcp.srcport"] in ports or r["tcp.dstport"] in ports]


def test_every_arm_is_committed() -> None:
    assert {"plain", "plain-tfo", "tcpcrypt", "tcpcrypt-resume", "tls", "tls-resume",
            "tls-0rtt", "tls-noeno", "tls-noeno-0rtt-tfo", "eno-test"} <= set(ARM_NAMES)


def test_every_segment_decodes(all_arms: dict[str, Path]) -> None:
    """No Malformed Packet, no Unknown (69), no Lua error anywhere in any arm's capture."""
    text = tshark(all_arms["pcap"], "-V", tcpcrypt_keys=all_arms["tcpcrypt-keylog"],
                  tls_keys=all_arms["sslkeylog"])
    assert "Malformed Packet" not in text
    assert "Unknown (69)" not in text
    assert text.count("TCP-ENO option (RFC 8547)") > 0


def test_every_frame_and_record_decrypts(decoded: list[dict[str, str]],
                                        bare: list[dict[str, str]]) -> None:
    def count(rows: list[dict[str, str]], name: str, value: str | None = None) -> int:
        return sum(1 for row in rows for v in row[name].split(",") if v and v == (value or v))

    frames = count(decoded, "tcpcrypt.message", "frame")
    assert frames >= 12 and count(decoded, "tcpcrypt.data_len") == frames
    assert count(bare, "tcpcrypt.data_len") == 0  # no plaintext without the key log
    # A decrypted TLS 1.3 record adds its inner content type; an encrypted one has only the
    # opaque type. So: inner types gained with the key log == encrypted records.
    encrypted = count(decoded, "tls.record.opaque_type")
    gained = count(decoded, "tls.record.content_type") - count(bare, "tls.record.content_type")
    assert encrypted >= 20 and gained == encrypted


def _eno_bodies(pcap: Path) -> list[tuple[int, bool, bytes]]:
    """(source port, ACK flag, ENO contents) of every SYN, read by the project's pcap reader."""
    with PcapReader(pcap) as reader:
        return [(s.sport, bool(s.flags & TcpFlag.ACK), data)
                for s in reader if s.flags & TcpFlag.SYN
                for kind, data in s.options if kind == 69]


def test_resumed_tcpcrypt_syn_fields(decoded: list[dict[str, str]]) -> None:
    rows = [r for r in of_arm(decoded, "tcpcrypt-resume") if r["tcp.flags.syn"] == "1"]
    expected = _eno_bodies(ARMS / "tcpcrypt-resume.pcap")
    assert len(rows) == len(expected) == 4
    for row, (port, ack, body) in zip(rows, expected, strict=True):
        option = parse_eno(body)
        assert int(row["tcp.srcport"]) == port
        assert row["tcpeno.tep"] == ",".join(f"{t:#04x}" for t in option.tep_ids)
        assert row["tcpeno.v"] == ",".join(str(int(t.v)) for t in option.teps)
        glob = option.explicit_global
        assert row["tcpeno.b"] == ("" if glob is None else str(int(glob.b)))
        assert row["tcpeno.subdata"] == ",".join(t.data.hex() for t in option.teps if t.data)
        assert row["tcpeno.negotiated_tep"] == ("0x23" if ack else "")  # B settles it (§4.5)
    resumed_syn, resumed_synack = rows[2], rows[3]
    assert (resumed_syn["tcpeno.tep"], resumed_syn["tcpeno.v"]) == ("0x23", "1")
    assert len(resumed_syn["tcpeno.subdata"]) == 2 * 17
    # 9-byte resumption identifier half, then the 8-byte nonce (RFC 8548 §3.5)
    assert resumed_syn["tcpeno.resume_nonce"] == resumed_syn["tcpeno.subdata"][18:]
    assert (resumed_synack["tcpeno.tep"], resumed_synack["tcpeno.v"],
            resumed_synack["tcpeno.b"]) == ("0x23", "1", "1")


def test_init1_cipher_list(decoded: list[dict[str, str]]) -> None:
    rows = [r for r in of_arm(decoded, "tcpcrypt") if r["tcpcrypt.message"] == "Init1"]
    assert len(rows) == 1
    assert rows[0]["tcpcrypt.cipher"] == ",".join(f"{c:#06x}" for c in DEFAULT_AEADS)
    assert len(rows[0]["tcpcrypt.n_a"]) == 64 and len(rows[0]["tcpcrypt.pub"]) == 64


def _python_plaintexts(arm: str) -> list[bytes]:
    """Every frame of every connection decrypted by the project's own tcpcrypt code."""
    keys: dict[tuple[str, int, str, int], TrafficKey] = {}
    for line in (ARMS / f"{arm}.tcpcrypt-keylog").read_text().splitlines():
        _, _sid, sip, sport, dip, dport, _gen, aead, key, nr = line.split()
        keys[(sip, int(sport), dip, int(dport))] = TrafficKey(int(aead, 16),
                                                              bytes.fromhex(key + nr))
    streams: dict[tuple[str, int, str, int], bytearray] = {}
    with PcapReader(ARMS / f"{arm}.pcap") as reader:
        for s in reader:
            if s.payload:
                streams.setdefault((s.src, s.sport, s.dst, s.dport), bytearray()).extend(
                    s.payload)
    out = []
    for flow, data in streams.items():
        pos = 0
        if data[:4] in (bytes.fromhex("15101a0e"), bytes.fromhex("097105e0")):
            pos = struct.unpack("!I", data[4:8])[0]  # skip Init1 / Init2
        while pos < len(data):
            clen = struct.unpack("!H", data[pos + 1:pos + 3])[0]
            header, body = bytes(data[pos:pos + 3]), bytes(data[pos + 3:pos + 3 + clen])
            out.append(keys[flow].open(pos, body, header)[1:])  # drop the flags byte
            pos += 3 + clen
    return out


@pytest.mark.parametrize("arm", ["tcpcrypt", "tcpcrypt-resume"])
def test_tcpcrypt_frames_decrypt_to_what_was_sent(arm: str, decoded: list[dict[str, str]]
                                                  ) -> None:
    rows = [r for r in of_arm(decoded, arm) if r["tcpcrypt.message"] == "frame"]
    lua = sorted(bytes.fromhex(r["tcpcrypt.data"]) for r in rows)
    assert lua == sorted(_python_plaintexts(arm))
    for record in records(arm):
        assert encode_request(int(str(record["conn"])), RESPONSE_SIZE, REQUEST_SIZE) in lua
    assert sum(1 for p in lua if len(p) == RESPONSE_SIZE) == len(records(arm))


@pytest.mark.parametrize("arm", ["tls", "tls-0rtt", "tls-noeno-0rtt-tfo"])
def test_tls_application_data_decrypts(arm: str, decoded: list[dict[str, str]]) -> None:
    plain = {bytes.fromhex(part) for r in of_arm(decoded, arm)
             for part in r["data.data"].split(",") if part}
    for record in records(arm):
        assert encode_request(int(str(record["conn"])), RESPONSE_SIZE, REQUEST_SIZE) in plain


def test_without_key_log_frames_stay_encrypted(bare: list[dict[str, str]]) -> None:
    rows = [r for r in bare if r["tcpcrypt.message"] == "frame"]
    assert rows and all(r["tcpcrypt.data"] == "" and "No key log line" in
                        r["_ws.expert.message"] for r in rows)


def test_a_key_log_that_does_not_match_yields_no_plaintext(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.tcpcrypt-keylog"
    lines = (ARMS / "tcpcrypt.tcpcrypt-keylog").read_text().splitlines()
    flipped = []
    for line in lines:  # same connection, one key bit flipped
        parts = line.split()
        parts[8] = f"{int(parts[8][0], 16) ^ 1:x}" + parts[8][1:]
        flipped.append(" ".join(parts))
    wrong.write_text("\n".join(flipped) + "\n")
    rows = fields(ARMS / "tcpcrypt.pcap", ["tcpcrypt.data", "_ws.expert.message"],
                  "-Y", 'tcpcrypt.message == "frame"', tcpcrypt_keys=wrong)
    assert rows and all(row[0] == "" and "authenticates" in row[1] for row in rows)


def test_truncated_capture_ends_cleanly(tmp_path: Path) -> None:
    short = tmp_path / "snap.pcap"  # every packet cut to 90 bytes, as `tcpdump -s 90` would
    subprocess.run(["editcap", "-s", "90", str(ARMS / "tcpcrypt.pcap"), str(short)], check=True)
    tshark(short, "-V", **keylogs("tcpcrypt"))
    cut = tmp_path / "cut.pcap"  # the file ends in the middle of a packet
    data = (ARMS / "tcpcrypt.pcap").read_bytes()
    cut.write_bytes(data[: len(data) - 100])
    proc = subprocess.run(["tshark", "-n", "-X", f"lua_script:{LUA}", "-r", str(cut), "-V"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert "cut short in the middle of a packet" in proc.stderr
    assert "Lua Error" not in proc.stdout + proc.stderr
    assert "tcpcrypt Init1" in proc.stdout


def _write_raw_pcap(path: Path, packets: list[bytes]) -> None:
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))  # LINKTYPE_RAW
    for i, pkt in enumerate(packets):
        out += struct.pack("<IIII", i, 0, len(pkt), len(pkt)) + pkt
    path.write_bytes(out)


def test_fuzzed_eno_options(tmp_path: Path) -> None:
    """The ENO fuzz corpus in SYNs (kind 69 and kind 253 with ExID 0x454E) and ACKs: tshark
    never errors, and a SYN is flagged ill-formed exactly when testbed/eno/option.py rejects
    its contents."""
    rng = random.Random(7)
    bodies = [b for seed in range(2) for b in _inputs(seed) if len(b) <= 36][:300]
    packets, verdicts = [], []
    for i, body in enumerate(bodies):
        experimental = rng.random() < 0.3
        option = (bytes([253, len(body) + 4]) + b"\x45\x4e" + body if experimental
                  else bytes([69, len(body) + 2]) + body)
        option += b"\x00" * (-len(option) % 4)
        flags = "S" if i % 4 else "A"
        packets.append(segment(("10.0.0.1", 1000 + i), ("10.0.0.2", 5000), flags, 1, 0,
                               options=option))
        if flags == "S" and len(option) <= 40:
            try:
                parse_eno(body)
                verdicts.append((i + 1, False))
            except EnoParseError:
                verdicts.append((i + 1, True))
    pcap = tmp_path / "fuzz.pcap"
    _write_raw_pcap(pcap, packets)
    rows = fields(pcap, ["frame.number", "tcpeno.form", "_ws.expert.message"])
    flagged = {int(r[0]): "Ill-formed" in r[2] or "ignores the option" in r[2] for r in rows}
    forms = {int(r[0]): r[1] for r in rows}
    assert sum(1 for v in flagged.values() if v) > 20
    for frame, ill in verdicts:
        assert forms[frame] == "SYN-form"
        assert flagged[frame] == ill, (frame, bodies[frame - 1].hex())


def test_two_pass_and_multiple_eno_options(tmp_path: Path,
                                           decoded: list[dict[str, str]]) -> None:
    """tshark -2 dissects every frame twice and gives the same plaintext; a SYN with two ENO
    options is flagged and counts as a SYN without ENO (RFC 8547 §4.1)."""
    twice = fields(ARMS / "tcpcrypt.pcap", ["tcpcrypt.data"], "-2", **keylogs("tcpcrypt"))
    once = [r["tcpcrypt.data"] for r in of_arm(decoded, "tcpcrypt")]
    assert [r[0] for r in twice if r[0]] == [d for d in once if d]
    a, b = ("10.0.0.1", 4000), ("10.0.0.2", 5000)
    two = bytes.fromhex("450323" "450324" "0000")  # two ENO options in one SYN
    pcap = tmp_path / "two.pcap"
    _write_raw_pcap(pcap, [segment(a, b, "S", 1, 0, options=two),
                           segment(b, a, "SA", 9, 2, options=bytes.fromhex("45040123"))])
    rows = fields(pcap, ["tcpeno.negotiated_tep", "_ws.expert.message"])
    assert "More than one ENO option" in rows[0][1]
    assert rows[1][0] == ""  # A's SYN counts as without ENO: nothing negotiated
