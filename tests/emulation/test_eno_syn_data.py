"""SYN data beside ENO on the real Linux stack (RFC 8547 §4.7), checked on the wire.

Linux's no-cookie TCP Fast Open modes put data on a SYN without a TFO cookie option, which
is the only way §4.7 allows (a non-empty TFO option beside ENO is a conflict):
``net.ipv4.tcp_fastopen`` = 0x1 | 0x4 on the client (send SYN data without a cookie) and
0x2 | 0x200 on the server (accept it without one), set per host and recorded in
``Network.sysctls``. The client announces ENO with ``Settings.syn_data`` (the API switch
§4.7 requires) and writes its first bytes through TCP_FASTOPEN_CONNECT; the hooks decide.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import topologies
from testbed.net.capture import Capture
from testbed.net.network import Network
from testbed.net.pcap import Segment, options_of, read_segments
from tests.emulation.eno_support import eno_hooks, run_script, stats, strip_rule

ENO_KIND = 69
CLIENT_TFO = {"net.ipv4.tcp_fastopen": str(0x1 | 0x4)}  # TFO_CLIENT_NO_COOKIE
SERVER_TFO = {"net.ipv4.tcp_fastopen": str(0x2 | 0x200)}  # TFO_SERVER_COOKIE_NOT_REQD
FIRST = b"first bytes, on the SYN"

SERVER = r'''
import json, socket, sys
from testbed.eno.control import HookClient, Settings
mode = sys.argv[1]  # "syn-data": the TEP defines SYN data; "plain-tep": it does not; "none"
if mode != "none":
    hook = HookClient()
    syn = (0x20,) if mode == "syn-data" else ()
    hook.listen(5000, Settings(teps=((0x20, None),), syn_data=syn))
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.setsockopt(socket.IPPROTO_TCP, 23, 16)  # TCP_FASTOPEN: the pending queue
ls.bind(("0.0.0.0", 5000))
ls.listen(8)
print("ready", flush=True)
ls.settimeout(10)
conn, _ = ls.accept()
conn.settimeout(5)
got = conn.recv(100)
conn.sendall(b"echo:" + got)
conn.close()
print(json.dumps({"got": got.decode()}))
'''

CLIENT = r'''
import json, socket, sys
from testbed.eno.control import HookClient, Settings
server, first = sys.argv[1], sys.argv[2].encode()
hook = HookClient()
s = socket.socket()
s.bind(("0.0.0.0", 0))
hook.announce(s.getsockname()[1], Settings(teps=((0x20, None),), syn_data=(0x20,)))
s.setsockopt(socket.IPPROTO_TCP, 30, 1)  # TCP_FASTOPEN_CONNECT: the SYN waits for the write
s.settimeout(5)
s.connect((server, 5000))
s.sendall(first)
r = hook.result(s.getsockname(), (server, 5000), wait=3.0)
reply = s.recv(100)
s.close()
print(json.dumps({"outcome": r.outcome, "reason": r.reason, "fallback": r.fallback,
                  "reply": reply.decode()}))
'''


def exchange(net: Network, tmp: Path, server_mode: str) -> tuple[dict[str, Any], dict[str, Any],
                                                                 list[Segment], list[Segment]]:
    """One connection; returns client result, server report and both captures."""
    net.set_sysctls("client", CLIENT_TFO)
    net.set_sysctls("server", SERVER_TFO)
    pcaps = {n: tmp / f"{n}.pcap" for n in ("client", "server")}
    server = net.popen("server", [sys.executable, "-c", SERVER, server_mode])
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        with Capture(net.nodes["server"], net.intf("server"), pcaps["server"]), \
                Capture(net.nodes["client"], net.intf("client"), pcaps["client"]):
            client = run_script(net, "client", CLIENT, net.ip("server"), FIRST.decode())
        out, err = server.communicate(timeout=15)
        assert server.returncode == 0, err[-2000:]
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert net.sysctls["client"]["net.ipv4.tcp_fastopen"] == "5"
    assert net.sysctls["server"]["net.ipv4.tcp_fastopen"] == "514"
    report = json.loads(out.strip().splitlines()[-1])
    return client, report, read_segments(pcaps["client"]), read_segments(pcaps["server"])


def syn_and_synack(segs: list[Segment]) -> tuple[Segment, Segment]:
    syn = next(s for s in segs if s.is_syn and not s.is_ack and s.dport == 5000)
    synack = next(s for s in segs if s.is_syn and s.is_ack and s.sport == 5000)
    return syn, synack


def test_syn_data_of_the_syn_tep_is_kept_and_acknowledged(tmp_path: Path) -> None:
    with Network(topologies.create("direct")) as net, eno_hooks(net):
        client, server, sent, got = exchange(net, tmp_path, "syn-data")
        server_hook = stats(net, "server")
    syn, synack = syn_and_synack(sent)
    # No TFO option (kind 34) at all: data without a cookie, ENO offering the SYN TEP 0x20.
    assert syn.payload == FIRST and options_of(syn, 34) == []
    assert options_of(syn, ENO_KIND) == [bytes.fromhex("20")]
    assert synack.ack == (syn.seq + 1 + len(FIRST)) & 0xFFFFFFFF  # the data was accepted
    assert options_of(synack, ENO_KIND) == [bytes.fromhex("0120")]
    assert syn_and_synack(got)[0].payload == FIRST
    assert (client["outcome"], client["reply"]) == ("negotiated", "echo:" + FIRST.decode())
    assert server["got"] == FIRST.decode()
    assert server_hook["counts"].get("syn_data_discarded", 0) == 0


def test_syn_data_is_discarded_when_the_server_tep_does_not_define_it(tmp_path: Path) -> None:
    with Network(topologies.create("direct")) as net, eno_hooks(net):
        client, server, sent, _ = exchange(net, tmp_path, "plain-tep")
        server_hook = stats(net, "server")
    syn, synack = syn_and_synack(sent)
    assert syn.payload == FIRST and options_of(syn, ENO_KIND) == [bytes.fromhex("20")]
    # §4.7: discarded and not acknowledged; the client's TCP sends the bytes again.
    assert synack.ack == (syn.seq + 1) & 0xFFFFFFFF
    resent = [s for s in sent if not s.is_syn and s.dport == 5000 and s.payload_len]
    assert resent and resent[0].payload == FIRST
    assert server_hook["counts"]["syn_data_discarded"] == 1
    assert client["outcome"] == "negotiated" and server["got"] == FIRST.decode()


def test_synack_without_eno_after_unacknowledged_syn_data_aborts(tmp_path: Path) -> None:
    with Network(topologies.create("middlebox")) as net, eno_hooks(net):
        net.run("mb", strip_rule("synack"))
        client, _, received, _ = exchange(net, tmp_path, "plain-tep")
    _, synack = syn_and_synack(received)
    assert options_of(synack, ENO_KIND) == []  # as the client's kernel received it
    assert (client["outcome"], client["reason"], client["fallback"]) == (
        "aborted", "syn_data_unconfirmed", "no_eno_in_synack")


def test_acknowledged_syn_data_without_eno_aborts(tmp_path: Path) -> None:
    """A server without ENO whose TFO stack took the data: the SYN TEP cannot have been
    negotiated, yet the data was acknowledged (misinterpreted as plain TCP data)."""
    with Network(topologies.create("direct")) as net, eno_hooks(net, nodes=("client",)):
        client, server, sent, _ = exchange(net, tmp_path, "none")
    syn, synack = syn_and_synack(sent)
    assert synack.ack == (syn.seq + 1 + len(FIRST)) & 0xFFFFFFFF
    assert options_of(synack, ENO_KIND) == []
    assert (client["outcome"], client["reason"]) == ("aborted", "syn_data_misinterpreted")
    assert server["got"] == FIRST.decode()  # what the abort is there for: B took it as data
