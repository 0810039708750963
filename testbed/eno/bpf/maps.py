"""The BPF side's maps, reached through the bpf(2) system call (ctypes, no compiler).

Layouts mirror the C structs of eno_maps.h (little-endian x86-64, no implicit padding):
``struct eno_sk`` (per socket, SK_STORAGE keyed by the socket's fd), ``struct eno_listen``
(per listener port), ``struct answer_key`` and ``struct eno_answer`` (single-use resumption
answers, RFC 8548 §3.5). Maps are pinned by the loader (testbed/eno/bpf/attach.py) under the
host's pin directory; processes in the host, whose mount namespace has its own /sys,
open them by id (``fd_by_id``).
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass
from pathlib import Path

SYS_BPF = 321  # x86-64
BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM, BPF_OBJ_GET = 1, 2, 3, 7
BPF_MAP_GET_FD_BY_ID = 14
BPF_ENABLE_STATS, BPF_STATS_RUN_TIME = 32, 0
BPF_ANY = 0
ATTR_SIZE = 128
BUF = 64  # option buffers in the C structs
OPT_MAX = 40
MAX_CANDS = 8
KEY_MAX = 16  # longest answer key

# struct eno_sk: state, mine_len, peer_len, flags, syn_limit, syns, peer_status, pad,
# segs_in, offered[16], mine[64], peer[64]
SK_FMT = struct.Struct(f"<8BI16s{BUF}s{BUF}s")
CAND_FMT = struct.Struct(f"<BB{BUF}s")
LISTEN_HEAD = struct.Struct("<BB2xI")  # count, need_a, pad, key_lens
LISTEN_SIZE = LISTEN_HEAD.size + MAX_CANDS * CAND_FMT.size
ANSWER_KEY_FMT = struct.Struct(f"<IBB2x{KEY_MAX}s")  # port, tep, len, pad, key
ANSWER_FMT = struct.Struct(f"<QB7x{BUF}s")  # deadline_ns, len, pad, opt

ST_OFFER, ST_ECHO, ST_DONE, ST_PASSIVE = 1, 2, 3, 4
F_ACK_ENO, F_ENO_LATER, F_SYN_DROPPED, F_SYNACK_ENO = 0x01, 0x02, 0x04, 0x08
PEER_OK, PEER_ABSENT, PEER_MULTIPLE, PEER_MALFORMED = 0, 1, 2, 3

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfError(OSError):
    """A bpf(2) call failed."""


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    ret = int(_libc.syscall(SYS_BPF, cmd, attr, ATTR_SIZE))
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError(err, f"bpf cmd {cmd}: {os.strerror(err)}")
    return ret


def obj_get(path: Path) -> int:
    """A new fd for the object pinned at ``path`` (close it when done)."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    attr = ctypes.create_string_buffer(ATTR_SIZE)
    struct.pack_into("<Q", attr, 0, ctypes.addressof(name))
    return _bpf(BPF_OBJ_GET, attr)


def enable_stats() -> int:
    """Turn on the kernel's run count and run time of every BPF program (``run_cnt``,
    ``run_time_ns`` in ``bpftool prog show``) until the returned fd is closed."""
    attr = ctypes.create_string_buffer(ATTR_SIZE)
    struct.pack_into("<I", attr, 0, BPF_STATS_RUN_TIME)
    return _bpf(BPF_ENABLE_STATS, attr)


def fd_by_id(map_id: int) -> int:
    """A new fd for the map with this id (works from any mount namespace)."""
    attr = ctypes.create_string_buffer(ATTR_SIZE)
    struct.pack_into("<I", attr, 0, map_id)
    return _bpf(BPF_MAP_GET_FD_BY_ID, attr)


def _elem(cmd: int, map_fd: int, key: bytes, value: ctypes.Array[ctypes.c_char] | None) -> int:
    kbuf = ctypes.create_string_buffer(key, len(key))
    attr = ctypes.create_string_buffer(ATTR_SIZE)
    vaddr = ctypes.addressof(value) if value is not None else 0
    struct.pack_into("<IIQQQ", attr, 0, map_fd, 0, ctypes.addressof(kbuf), vaddr, BPF_ANY)
    return _bpf(cmd, attr)


def update(map_fd: int, key: bytes, value: bytes) -> None:
    _elem(BPF_MAP_UPDATE_ELEM, map_fd, key, ctypes.create_string_buffer(value, len(value)))


def lookup(map_fd: int, key: bytes, size: int) -> bytes | None:
    out = ctypes.create_string_buffer(size)
    try:
        _elem(BPF_MAP_LOOKUP_ELEM, map_fd, key, out)
    except BpfError as exc:
        if exc.errno == 2:  # ENOENT
            return None
        raise
    return out.raw


def delete(map_fd: int, key: bytes) -> bool:
    try:
        _elem(BPF_MAP_DELETE_ELEM, map_fd, key, None)
    except BpfError as exc:
        if exc.errno == 2:
            return False
        raise
    return True


@dataclass
class SockRecord:
    """``struct eno_sk``: what the kernel program did and saw on one socket."""

    state: int = 0
    flags: int = 0
    syn_limit: int = 0  # SYNs that carry ENO; 0: all (§4.6)
    syns: int = 0
    peer_status: int = PEER_ABSENT
    segs_in: int = 0
    offered: bytes = bytes(16)
    mine: bytes = b""  # our SYN-form option (kind, length, contents)
    peer: bytes = b""  # the peer's, as received

    def pack(self) -> bytes:
        return SK_FMT.pack(self.state, len(self.mine), len(self.peer), self.flags,
                           self.syn_limit, self.syns, self.peer_status, 0, self.segs_in,
                           self.offered, self.mine, self.peer)

    @classmethod
    def unpack(cls, raw: bytes) -> SockRecord:
        (state, mine_len, peer_len, flags, syn_limit, syns, status, _pad, segs_in, offered,
         mine, peer) = SK_FMT.unpack(raw)
        return cls(state=state, flags=flags, syn_limit=syn_limit, syns=syns,
                   peer_status=status, segs_in=segs_in, offered=offered,
                   mine=mine[: min(mine_len, OPT_MAX)], peer=peer[: min(peer_len, OPT_MAX)])


def id_bitmap(tep_ids: list[int]) -> bytes:
    out = bytearray(16)
    for tep in tep_ids:
        out[tep >> 3] |= 1 << (tep & 7)
    return bytes(out)


def pack_listen(cands: list[tuple[int, bytes]], need_a: bool, key_lens: int = 0) -> bytes:
    """``struct eno_listen``: the SYN-ACK option for each TEP, the listener's best first;
    ``key_lens`` has bit n set when answers with n-byte keys exist."""
    if len(cands) > MAX_CANDS:
        raise ValueError(f"at most {MAX_CANDS} TEPs per listener on the bpf datapath")
    out = bytearray(LISTEN_HEAD.pack(len(cands), int(need_a), key_lens))
    for tep, option in cands:
        out += CAND_FMT.pack(tep, len(option), option)
    out += bytes(LISTEN_SIZE - len(out))
    return bytes(out)


def answer_key(port: int, tep_id: int, key: bytes) -> bytes:
    """``struct answer_key``: listener port, TEP id, the key (zero-padded)."""
    if not 1 <= len(key) <= KEY_MAX:
        raise ValueError(f"an answer key has 1 to {KEY_MAX} bytes, not {len(key)}")
    return ANSWER_KEY_FMT.pack(port, tep_id, len(key), key)


def pack_answer(deadline_ns: int, option: bytes) -> bytes:
    """``struct eno_answer``: the SYN-ACK option to send, usable until ``deadline_ns``
    (CLOCK_MONOTONIC, the clock of the program's bpf_ktime_get_ns)."""
    if not 2 <= len(option) <= OPT_MAX:
        raise ValueError(f"an ENO option has 2 to {OPT_MAX} bytes, not {len(option)}")
    return ANSWER_FMT.pack(deadline_ns, len(option), option)
