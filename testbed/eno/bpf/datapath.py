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
  exactly once (RFC 8547 §4.5). After accept(), A's SYN option, our SYN-ACK option and
  whether the first ACK carried ENO (§4.6 rule 1) are replayed through a passive negotiator.
* passive resumption (RFC 8548 §3.5): ``answer`` pushes a single-use answer, the SYN-ACK
  option the core sends when A's suboption data for a TEP begins with a key (tcpcrypt: the
  identifier half A will send) and the answer data is ours. The kernel uses it for the first
  SYN that names it before its deadline and deletes it; any other SYN gets the fresh answer.
  The replay's answerer takes a pushed answer only where the kernel sent it (a fresh answer
  is always allowed, §3.5 "MAY ... request fresh key exchange"), so what the core checks is
  that every resumption answer on the wire is one this process pushed for that key.
  Room: Linux leaves a BPF program 20 option bytes on a SYN-ACK beside MSS, SACK-permitted,
  timestamps and window scale (``SYNACK_ROOM``), so an answer's data has at most 16 bytes
  beside the kind, length, global suboption and TEP byte; ``answer`` refuses more.

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
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

from testbed.eno import option as eno_option
from testbed.eno.bpf import maps
from testbed.eno.config import EnoConfig, TepAnswerer
from testbed.eno.control import Addr, Result, Settings
from testbed.eno.engine import Conn, result_of
from testbed.eno.errors import EnoError
from testbed.eno.negotiation import EnoNegotiator, State
from testbed.eno.option import TepSuboption
from testbed.eno.selection import active_syn_option

CGROUP_PREFIX = "tcpinc-eno"  # cgroup directory and pin directory names start with this
BPF_FS = Path(os.environ.get("TCPINC_BPF_FS", "/sys/fs/bpf"))
MAP_IDS = Path(os.environ.get("TCPINC_STATE_DIR", "/run/tcpinc")) / "bpf"
EMPTY_NON_SYN = eno_option.encode_non_syn_eno()
# TCP option bytes left to a BPF program on a SYN-ACK: 40 minus MSS (4), SACK-permitted with
# timestamps (12) and window scale with its NOP (4), the kernel's 4-byte aligned sizes.
SYNACK_ROOM = 20
ANSWER_DATA_ROOM = SYNACK_ROOM - 4  # kind, length, B's global suboption (§4.2), TEP byte
MAX_ANSWERS = 8192  # the eno_answers map's size; the mirror drops its oldest beyond it


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
    return BpfHost(int(ids["eno_sk"]), int(ids["eno_listen"]), int(ids["eno_answers"]))


@dataclass
class _Listening:
    settings: Settings
    cands: list[tuple[int, bytes]]
    key_lens: int = 0  # bit n: answers with n-byte keys were pushed for this port


class BpfHost:
    """The maps of one host's program (fds kept open for the process's life), and what this
    process pushed into them (listeners, resumption answers) for the replay."""

    def __init__(self, sk_id: int, listen_id: int, answers_id: int) -> None:
        self.sk_fd = maps.fd_by_id(sk_id)
        self.listen_fd = maps.fd_by_id(listen_id)
        self.answers_fd = maps.fd_by_id(answers_id)
        self._lock = threading.Lock()
        self._listening: dict[int, _Listening] = {}
        self.book = AnswerBook()

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
        with self._lock:
            entry = self._listening[port] = _Listening(settings, cands)
            self._push_listen(port, entry)

    def _push_listen(self, port: int, entry: _Listening) -> None:
        value = maps.pack_listen(entry.cands, entry.settings.mandatory_app_aware,
                                 entry.key_lens)
        maps.update(self.listen_fd, port.to_bytes(4, "little"), value)

    def unlisten(self, port: int) -> None:
        """Forget the listener and the answers pushed for it."""
        with self._lock:
            self._listening.pop(port, None)
            maps.delete(self.listen_fd, port.to_bytes(4, "little"))
            for key in self.book.drop_port(port):
                maps.delete(self.answers_fd, maps.answer_key(*key))

    # -- passive resumption (RFC 8548 §3.5) ----------------------------------------------

    def answer(self, port: int, tep_id: int, key: bytes, data: bytes, ttl: float) -> None:
        """Answer the next SYN to ``port`` whose ``tep_id`` data begins with ``key`` with
        ``data`` (single use; forgotten after ``ttl`` s or with the listener)."""
        if not key or not data:
            raise ValueError("an answer needs a key and data")
        if len(data) > ANSWER_DATA_ROOM:
            raise BpfDatapathError(f"a resumption answer of {len(data)} bytes does not fit "
                                   f"a SYN-ACK on the bpf datapath (at most "
                                   f"{ANSWER_DATA_ROOM}); use --eno-datapath nfqueue")
        with self._lock:
            entry = self._listening.get(port)
            if entry is None:
                raise ValueError(f"port {port} has no listener")
            option = _answer_option(_config(entry.settings, active=False), tep_id, key, data)
            deadline = time.monotonic() + ttl  # CLOCK_MONOTONIC, as bpf_ktime_get_ns
            maps.update(self.answers_fd, maps.answer_key(port, tep_id, key),
                        maps.pack_answer(int(deadline * 1e9), option))
            self.book.add((port, tep_id, bytes(key)), data, deadline)
            if not entry.key_lens & (1 << len(key)):
                entry.key_lens |= 1 << len(key)
                self._push_listen(port, entry)

    def unanswer(self, port: int, tep_id: int, key: bytes) -> bool:
        """Withdraw an unused answer (its secret left the cache)."""
        with self._lock:
            self.book.remove((port, tep_id, bytes(key)))
            return maps.delete(self.answers_fd, maps.answer_key(port, tep_id, key))

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
        # Only a listener this process pushed answers for needs the (uncached) answerer.
        answerer = None if active or not self.book.has_port(local[1]) else self.book.answerer(
            local[1], record.mine)
        return judge(record, settings, active=active, local=(local[0], local[1]),
                     remote=(peer[0], peer[1]), answerer=answerer)

    def peer_eno_after_fallback(self, sock: socket.socket) -> bool:
        record = self.record(sock)
        return bool(record and record.flags & maps.F_ENO_LATER)


AnswerKey = tuple[int, int, bytes]  # listener port, TEP id, key


class AnswerBook:
    """The answers this process pushed into eno_answers, oldest first: the replay's input
    (module docstring). Thread-safe."""

    def __init__(self, limit: int = MAX_ANSWERS) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._answers: OrderedDict[AnswerKey, tuple[bytes, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._answers)

    def add(self, key: AnswerKey, data: bytes, deadline: float) -> None:
        """Record a push; drops answers past their deadline, and the oldest beyond the map's
        size (the LRU map has dropped them too)."""
        with self._lock:
            now = time.monotonic()
            while self._answers:
                old, (_, old_deadline) = next(iter(self._answers.items()))
                if old_deadline > now and len(self._answers) < self.limit:
                    break
                del self._answers[old]
            self._answers[key] = (bytes(data), deadline)

    def remove(self, key: AnswerKey) -> None:
        with self._lock:
            self._answers.pop(key, None)

    def has_port(self, port: int) -> bool:
        with self._lock:
            return any(k[0] == port for k in self._answers)

    def drop_port(self, port: int) -> list[AnswerKey]:
        with self._lock:
            gone = [k for k in self._answers if k[0] == port]
            for key in gone:
                del self._answers[key]
        return gone

    def answerer(self, port: int, sent: bytes) -> TepAnswerer:
        """The replay's answerer for listener ``port``: the pushed answer the SYN names,
        where the kernel sent it (``sent``: our SYN-ACK option as recorded). An answer the
        SYN names is used up either way: the kernel sent it, or found it expired or taken."""

        def answer(offer: TepSuboption, peer: tuple[TepSuboption, ...]) -> TepSuboption:
            data = peer[0].data if len(peer) == 1 else None
            if not data:
                return offer
            with self._lock:
                sizes = sorted({len(k[2]) for k in self._answers if k[0] == port})
                for size in sizes:
                    found = self._answers.pop((port, offer.tep_id, data[:size]), None)
                    if found is not None:
                        pushed = TepSuboption(offer.tep_id, found[0])
                        return pushed if sent.endswith(pushed.encode(last=True)) else offer
            return offer

        return answer


def judge(record: maps.SockRecord, settings: Settings, *, active: bool, local: Addr,
          remote: Addr, answerer: TepAnswerer | None = None) -> Result:
    """Replay the recorded handshake through the pure core (module docstring); a passive
    replay answers resumption offers with ``answerer`` (``AnswerBook.answerer``).

    Without an answerer the replay is a pure function of the settings and of what the kernel
    recorded (options, SYN count, flags): connections of one arm repeat the same inputs, so
    the verdict is computed once per distinct input and reused with this connection's
    addresses. That keeps the core's replay (a few hundred microseconds of Python) off every
    connection's path between the SYN-ACK and the TEP's first message. Pushed answers are
    single use, so a replay with an answerer is never cached."""
    if answerer is not None:
        verdict = _replay(settings, active, record, answerer)
    else:
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
    return _replay(settings, active, record, None)


def _replay(settings: Settings, active: bool, record: maps.SockRecord,
            answerer: TepAnswerer | None) -> Result:
    config = _config(settings, active=active)
    if answerer is not None:
        config = replace(config, answerer=answerer)
    neg = EnoNegotiator(config, active=active)
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
    sent = neg.send_syn().option
    if sent != record.mine:
        return "the SYN option in the kernel is not the one the core sends"
    for _ in range(max(record.syns - 1, 0)):  # SYN retransmissions (§4.6 exception)
        neg.send_syn()
    neg.receive_synack(_peer_block(record))
    echoed = neg.send_ack().option if neg.state is State.SYNACK_RECEIVED else None
    if (echoed is not None) != bool(record.flags & maps.F_SYNACK_ENO):
        return "the kernel and the core disagree on ENO in the third segment"
    return None


def _replay_passive(neg: EnoNegotiator, record: maps.SockRecord) -> str | None:
    neg.receive_syn(_peer_block(record))
    answered = neg.send_synack().option if neg.state is State.SYN_RECEIVED else None
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


def _answer_option(config: EnoConfig, tep_id: int, key: bytes, data: bytes) -> bytes:
    """The SYN-ACK option the core sends to a SYN whose ``tep_id`` suboption carries
    ``key``, answered with ``data`` (RFC 8548 §3.5)."""
    answered = replace(config, answerer=lambda offer, _peer: TepSuboption(offer.tep_id, data))
    syn = eno_option.EnoOption.build([TepSuboption(tep_id, key)],
                                     eno_option.GlobalSuboption(a=True)).encode()
    neg = EnoNegotiator(answered, active=False)
    neg.receive_syn(syn)
    if neg.state is not State.SYN_RECEIVED:
        raise BpfDatapathError(f"the listener does not negotiate TEP {tep_id:#x}")
    option = neg.send_synack().option
    if option is None or len(option) > SYNACK_ROOM:
        raise BpfDatapathError(f"a resumption answer for TEP {tep_id:#x} does not fit a "
                               "SYN-ACK on the bpf datapath; use --eno-datapath nfqueue")
    return option


def _synack_for(config: EnoConfig, tep_id: int) -> bytes | None:
    """The SYN-ACK option the core sends to a SYN offering ``tep_id`` alone."""
    global_ = eno_option.GlobalSuboption(a=True)  # passes a mandatory a-bit check (§4.2)
    syn = eno_option.EnoOption.build([tep_id], global_).encode()
    neg = EnoNegotiator(config, active=False)
    with contextlib.suppress(EnoError):
        neg.receive_syn(syn)
        if neg.state is State.SYN_RECEIVED:
            return neg.send_synack().option
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
