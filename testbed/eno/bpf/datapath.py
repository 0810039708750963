"""The bpf ENO datapath as a stream sees it: offers in, transcript out, by socket fd.

A host on the bpf datapath runs its processes in its own cgroup v2 directory, to which
testbed/eno/bpf/attach.py attached eno.bpf.c; the ids of that program's maps are in
``MAP_IDS/<cgroup name>.json`` (/run is shared with the hosts, /sys/fs/bpf is not).
``current()`` finds them from /proc/self/cgroup, so a process learns its host's datapath
without being told.

The pure core (testbed/eno) stays the authority:

* active opener: the SYN-form option is ``active_syn_option`` of the stream's settings,
  written into the socket's storage before connect(); after connect() the recorded
  SYN-ACK option is replayed through an ``EnoNegotiator`` (send_syn, receive_synack,
  send_ack), whose outcome is the stream's result;
* listener: for each TEP it offers, the SYN-ACK option the core itself sends to an offer
  of that TEP alone is prepared (best first); the kernel picks the first one A offered
  (RFC 8547 §4.5). After accept(), A's SYN option, our SYN-ACK option and whether the first
  ACK carried ENO (§4.6 rule 1) are replayed through a passive negotiator.

Where the kernel did something the core would not have (a SYN-ACK it answered differently,
an ACK it sent with ENO against the core's verdict), the result says so as an error and
the stream resets: the two ends may disagree about encryption, so nothing may be sent.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
from pathlib import Path

from testbed.eno import option as eno_option
from testbed.eno.bpf import maps
from testbed.eno.config import EnoConfig
from testbed.eno.control import Addr, Result, Settings
from testbed.eno.engine import Conn, result_of
from testbed.eno.errors import EnoError
from testbed.eno.negotiation import EnoNegotiator, State
from testbed.eno.selection import active_syn_option

CGROUP_PREFIX = "tcpinc-eno"  # cgroup directory and pin directory names start with this
BPF_FS = Path(os.environ.get("TCPINC_BPF_FS", "/sys/fs/bpf"))
MAP_IDS = Path(os.environ.get("TCPINC_STATE_DIR", "/run/tcpinc")) / "bpf"
EMPTY_NON_SYN = eno_option.encode_non_syn_eno()


class BpfDatapathError(Exception):
    """The stream's settings need something the bpf datapath does not do."""


def own_cgroup(pid: int | str = "self") -> str | None:
    """The cgroup v2 path of a process ("0::/x/y" in /proc/PID/cgroup), or None."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            return line[3:]
    return None


@functools.cache
def current() -> BpfHost | None:
    """This process's host on the bpf datapath, or None (nfqueue or no ENO at all)."""
    path = own_cgroup()
    if path is None:
        return None
    name = path.rstrip("/").rsplit("/", 1)[-1]
    if not name.startswith(CGROUP_PREFIX):
        return None
    try:
        ids = json.loads((MAP_IDS / f"{name}.json").read_text())
    except FileNotFoundError:
        return None
    return BpfHost(int(ids["eno_sk"]), int(ids["eno_listen"]))


class BpfHost:
    """The maps of one host's program (fds kept open for the process's life)."""

    def __init__(self, sk_id: int, listen_id: int) -> None:
        self.sk_fd = maps.fd_by_id(sk_id)
        self.listen_fd = maps.fd_by_id(listen_id)

    # -- active opener ------------------------------------------------------------------

    def offer(self, sock: socket.socket, settings: Settings) -> None:
        """Before connect(): the SYN-form option (§4.1) the kernel puts on our SYN."""
        maps.update(self.sk_fd, _fd_key(sock), _offer_value(settings))

    # -- listener -------------------------------------------------------------------------

    def listen(self, port: int, settings: Settings) -> None:
        """Prepare the SYN-ACK options the kernel may answer with on ``port`` (§4.5)."""
        config = _config(settings, active=False)
        cands = []
        for offer in config.offers:
            answer = _synack_for(config, offer.tep_id)
            if answer is not None:
                cands.append((offer.tep_id, answer))
        if not cands:
            raise BpfDatapathError("none of the listener's TEPs can be answered")
        value = maps.pack_listen(cands, settings.mandatory_app_aware)
        maps.update(self.listen_fd, port.to_bytes(4, "little"), value)

    def unlisten(self, port: int) -> None:
        maps.delete(self.listen_fd, port.to_bytes(4, "little"))

    # -- results -------------------------------------------------------------------------

    def record(self, sock: socket.socket) -> maps.SockRecord | None:
        raw = maps.lookup(self.sk_fd, _fd_key(sock), maps.SK_FMT.size)
        return None if raw is None else maps.SockRecord.unpack(raw)

    def result(self, sock: socket.socket, settings: Settings, *, active: bool,
               remote: Addr | None = None) -> Result | None:
        """The pure core's verdict on what the kernel recorded for this socket."""
        record = self.record(sock)
        if record is None:
            return None
        local = sock.getsockname()  # after a reset: still the bound port
        peer = remote or sock.getpeername()
        return judge(record, settings, active=active, local=(local[0], local[1]),
                     remote=(peer[0], peer[1]))

    def peer_eno_after_fallback(self, sock: socket.socket) -> bool:
        record = self.record(sock)
        return bool(record and record.flags & maps.F_ENO_LATER)


def judge(record: maps.SockRecord, settings: Settings, *, active: bool, local: Addr,
          remote: Addr) -> Result:
    """Replay the recorded handshake through the pure core (module docstring).

    The replay is a pure function of the settings and of what the kernel recorded (options,
    SYN count, flags): connections of one arm repeat the same inputs, so the verdict is
    computed once per distinct input and reused with this connection's addresses. That keeps
    the core's replay (a few hundred microseconds of Python) off every connection's path
    between the SYN-ACK and the TEP's first message."""
    verdict = _verdict(settings, active, record.mine, record.peer, record.peer_status,
                       record.syns, record.flags)
    # Not dataclasses.replace, which costs three times as much for this many fields.
    return Result(**{**vars(verdict), "local": local, "remote": remote})


@functools.lru_cache(maxsize=1024)
def _verdict(settings: Settings, active: bool, mine: bytes, peer: bytes, peer_status: int,
             syns: int, flags: int) -> Result:
    """``judge`` for placeholder addresses (the replay never reads them)."""
    record = maps.SockRecord(mine=mine, peer=peer, peer_status=peer_status, syns=syns,
                             flags=flags)
    neg = EnoNegotiator(_config(settings, active=active), active=active)
    conn = Conn(key=("", 0, "", 0), negotiator=neg, active=active, last=0.0)
    try:
        mismatch = _replay_active(neg, record) if active else _replay_passive(neg, record)
    except EnoError as exc:
        mismatch = f"the ENO core refused the recorded handshake: {exc}"
    if mismatch:
        conn.error = f"bpf datapath: {mismatch}"
    conn.peer_eno_after_fallback = bool(record.flags & maps.F_ENO_LATER)
    return result_of(conn)


def _peer_block(record: maps.SockRecord) -> bytes:
    """The peer's options as the core reads them: its ENO option, twice when the kernel
    saw several (§4.1), nothing when there was none."""
    if record.peer_status == maps.PEER_MULTIPLE:
        return record.peer + record.peer
    return record.peer if record.peer_status != maps.PEER_ABSENT else b""


def _replay_active(neg: EnoNegotiator, record: maps.SockRecord) -> str | None:
    sent = neg.send_syn()
    if sent != record.mine:
        return "the SYN option in the kernel is not the one the core sends"
    for _ in range(max(record.syns - 1, 0)):  # SYN retransmissions (§4.6 exception)
        neg.send_syn()
    neg.receive_synack(_peer_block(record))
    echoed = neg.send_ack() if neg.state is State.SYNACK_RECEIVED else None
    if (echoed is not None) != bool(record.flags & maps.F_SYNACK_ENO):
        return "the kernel and the core disagree on ENO in the third segment"
    return None


def _replay_passive(neg: EnoNegotiator, record: maps.SockRecord) -> str | None:
    neg.receive_syn(_peer_block(record))
    answered = neg.send_synack() if neg.state is State.SYN_RECEIVED else None
    if (answered or b"") != record.mine:
        return "the kernel's SYN-ACK option is not the one the core answers"
    if neg.state is State.SYNACK_SENT:
        neg.receive_ack(EMPTY_NON_SYN if record.flags & maps.F_ACK_ENO else b"")
    return None


@functools.lru_cache(maxsize=256)
def _offer_value(settings: Settings) -> bytes:
    """The socket storage an active opener starts with (built once per settings: the core's
    option encoding would otherwise sit on every connection's path to connect())."""
    config = _config(settings, active=True)
    mine = active_syn_option(config).encode()
    limit = 0 if settings.syn_retries is None else min(settings.syn_retries + 1, 255)
    record = maps.SockRecord(state=maps.ST_OFFER, syn_limit=limit, mine=mine,
                             offered=maps.id_bitmap([o.tep_id for o in config.offers]))
    return record.pack()


def _synack_for(config: EnoConfig, tep_id: int) -> bytes | None:
    """The SYN-ACK option the core sends to a SYN offering ``tep_id`` alone."""
    global_ = eno_option.GlobalSuboption(a=True)  # passes a mandatory a-bit check (§4.2)
    syn = eno_option.EnoOption.build([tep_id], global_).encode()
    neg = EnoNegotiator(config, active=False)
    with contextlib.suppress(EnoError):
        neg.receive_syn(syn)
        if neg.state is State.SYN_RECEIVED:
            return neg.send_synack()
    return None


@functools.lru_cache(maxsize=256)
def _config(settings: Settings, *, active: bool) -> EnoConfig:
    if settings.passive_role:
        raise BpfDatapathError("simultaneous open (b = 1 on an active opener) needs "
                               "--eno-datapath nfqueue")
    if settings.syn_data:
        raise BpfDatapathError("data on the SYN (RFC 8547 §4.7) needs --eno-datapath nfqueue")
    if active and settings.mandatory_app_aware:
        raise BpfDatapathError("mandatory application-aware mode on an active opener needs "
                               "--eno-datapath nfqueue")
    return settings.eno_config()


def _fd_key(sock: socket.socket) -> bytes:
    return sock.fileno().to_bytes(4, "little")
