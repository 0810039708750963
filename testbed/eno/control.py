"""The ENO hook's control channel: what local applications ask, and what they get back.

Transport: an abstract-namespace AF_UNIX SOCK_SEQPACKET socket (name ``DEFAULT_NAME``).
Abstract names belong to a network namespace, so each Mininet host has its own hook and an
application reaches only the hook of the host it runs in. The hook accepts a peer only if
SO_PEERCRED says uid 0: only root in that host can steer ENO.

One message is one JSON object (SEQPACKET keeps the boundaries). Requests carry ``op`` and an
optional ``id`` that the reply echoes; replies carry ``ok`` and, when false, ``error``.

``hello``                      -> {version, pid}
``listen``   port, settings     register a listener: SYNs to this local port get ENO with these
                                settings (RFC 8547 §4.2: passive openers send b = 1). Lives as
                                long as the control connection that made it, or ``unlisten``.
``unlisten`` port
``announce`` port, settings[, ttl][, noreply]
                                the next SYN this host sends from local ``port`` gets ENO with
                                these settings (suboption data such as a resumption identifier
                                goes in ``settings.teps``). Used once; forgotten after ``ttl`` s.
                                With ``noreply`` true it is one-way: no reply, not even an
                                error (the client validated the settings already).
``cancel``   port               forget an unused announcement
``result``   local, remote[, wait]
                                the negotiation result of connection (local ip, port) <->
                                (remote ip, port); with ``wait`` > 0 the reply is held until the
                                outcome is known or ``wait`` seconds pass -> {result: ... | null}.
                                null at once if the hook never followed that connection.
``stats``                       -> {stats: counters, table size, RSS, CPU per packet}
``answer``   port, tep_id, key, data, ttl[, noreply]
                                passive resumption (RFC 8548 §3.5): the next SYN to listener
                                ``port`` whose suboption for ``tep_id`` carries data beginning
                                with ``key`` (hex) is answered with ``data`` (hex) for that TEP
                                instead of the listener's fixed suboption. Single use; forgotten
                                after ``ttl`` s or with the listener. Any other SYN gets the
                                listener's settings (a fresh key exchange for tcpcrypt).
``unanswer`` port, tep_id, key[, noreply]
                                withdraw an unused answer (its secret left the cache)

Settings: ``{"teps": [[tep_id, data_hex | null], ...], "b": bool, "a": bool,
"mandatory_app_aware": bool, "mandatory": bool, "expect": [[tep_id, prefix_hex], ...]}``; TEPs
most preferred first. ``expect`` (active openers): a peer suboption for ``tep_id`` that
carries data is valid only if the data begins with the prefix; one without data stays valid.
RFC 8548 §3.5: a resumption answer must carry the other half of our identifier, and an active
opener ignores a non-matching one (and disables ENO when it was the only TEP).
"""

from __future__ import annotations

import json
import socket
from dataclasses import asdict, dataclass, fields
from typing import Any

from testbed.eno.config import EnoConfig, TepValidator, default_validator
from testbed.eno.constants import MAX_SYN_ENO_BODY, TEP_ID_MAX, TEP_ID_MIN
from testbed.eno.option import TepSuboption

DEFAULT_NAME = "tcpinc-eno-hook"
PROTOCOL_VERSION = 1
MAX_MESSAGE = 65536
MAX_SYN_RETRIES = 255  # above any tcp_syn_retries the kernel accepts (its maximum is 127)
Addr = tuple[str, int]


class ControlError(Exception):
    """A malformed request, or the hook refused one."""


class HookUnavailableError(ControlError):
    """No hook listens on the control name in this network namespace."""


def _bool(data: dict[str, Any], key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise ControlError(f"settings.{key} must be true or false")
    return value


@dataclass(frozen=True, kw_only=True)
class Settings:
    """What one application wants from ENO on one port (RFC 8547 §4.2, §4.7 knobs)."""

    teps: tuple[tuple[int, bytes | None], ...] = ()  # (TEP id, suboption data), best first
    passive_role: bool = False  # the b bit of an active opener (simultaneous open, §4.3)
    application_aware: bool = False  # the a bit (§4.2)
    mandatory_app_aware: bool = False  # fall back unless the peer sets a = 1 (§4.2)
    mandatory: bool = False  # mandatory encryption: abort instead of falling back (§4.7)
    # (TEP id, prefix): the peer's data for that TEP must begin with prefix (module docstring)
    expect: tuple[tuple[int, bytes], ...] = ()
    # §4.6 exception: SYN retransmissions that still carry ENO before an active opener drops
    # it and falls back (None: all of them). Opportunistic only (mandatory never drops it).
    syn_retries: int | None = None
    # §4.7: offered TEP ids whose (variant) specification defines SYN data; non-empty turns
    # on SYN data for them, the API switch the RFC requires to be off by default.
    syn_data: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.syn_retries is not None and (
            isinstance(self.syn_retries, bool) or not isinstance(self.syn_retries, int)
            or not 0 <= self.syn_retries <= MAX_SYN_RETRIES
        ):
            raise ControlError(f"syn_retries must be null or 0..{MAX_SYN_RETRIES}")
        if self.syn_retries is not None and self.mandatory:
            raise ControlError("mandatory encryption never drops ENO from SYN retransmissions")
        seen: set[int] = set()
        for tep_id, data in self.teps:
            if not TEP_ID_MIN <= tep_id <= TEP_ID_MAX or tep_id in seen:
                raise ControlError(f"TEP id {tep_id:#x} invalid or repeated (RFC 8547 §4.1)")
            if data is not None and not 0 < len(data) <= MAX_SYN_ENO_BODY - 1:
                raise ControlError(f"suboption data for {tep_id:#x} must be 1..37 bytes")
            seen.add(tep_id)
        expected = [tep_id for tep_id, _ in self.expect]
        if len(set(expected)) != len(expected) or not set(expected) <= seen:
            raise ControlError("expect names each offered TEP at most once")
        if any(not 0 < len(prefix) <= MAX_SYN_ENO_BODY - 1 for _, prefix in self.expect):
            raise ControlError("an expected prefix is 1..37 bytes")
        if len(set(self.syn_data)) != len(self.syn_data) or not set(self.syn_data) <= seen:
            raise ControlError("syn_data names offered TEP ids, each at most once")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "teps": [[t, d.hex() if d is not None else None] for t, d in self.teps],
            "b": self.passive_role, "a": self.application_aware,
            "mandatory_app_aware": self.mandatory_app_aware, "mandatory": self.mandatory,
        }
        if self.expect:
            out["expect"] = [[t, prefix.hex()] for t, prefix in self.expect]
        if self.syn_retries is not None:
            out["syn_retries"] = self.syn_retries
        if self.syn_data:
            out["syn_data"] = list(self.syn_data)
        return out

    @classmethod
    def from_json(cls, data: Any) -> Settings:
        if not isinstance(data, dict):
            raise ControlError("settings must be an object")
        known = {"teps", "b", "a", "mandatory_app_aware", "mandatory", "expect", "syn_retries",
                 "syn_data"}
        unknown = set(data) - known
        if unknown:
            raise ControlError(f"unknown settings {sorted(unknown)}")
        teps = []
        for item in data.get("teps", []):
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], int)):
                raise ControlError("settings.teps items are [tep_id, data_hex | null]")
            raw = None if item[1] is None else hex_bytes(item[1], "suboption data")
            teps.append((item[0], raw))
        expect = []
        for item in data.get("expect", []):
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], int)):
                raise ControlError("settings.expect items are [tep_id, prefix_hex]")
            expect.append((item[0], hex_bytes(item[1], "expected prefix")))
        syn_data = data.get("syn_data", [])
        if not isinstance(syn_data, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in syn_data
        ):
            raise ControlError("settings.syn_data is a list of TEP ids")
        return cls(
            teps=tuple(teps), passive_role=_bool(data, "b"),
            application_aware=_bool(data, "a"),
            mandatory_app_aware=_bool(data, "mandatory_app_aware"),
            mandatory=_bool(data, "mandatory"), expect=tuple(expect),
            syn_retries=data.get("syn_retries"), syn_data=tuple(syn_data),
        )

    def eno_config(self) -> EnoConfig:
        offers = tuple(TepSuboption(t) if d is None else TepSuboption(t, d) for t, d in self.teps)
        validator = expecting_validator(dict(self.expect)) if self.expect else default_validator
        return EnoConfig(
            teps=offers, passive_role=self.passive_role,
            application_aware=self.application_aware,
            mandatory_application_aware=self.mandatory_app_aware,
            mandatory_encryption=self.mandatory, validator=validator,
            syn_retries_with_eno=self.syn_retries,
            syn_data_teps=frozenset(self.syn_data), allow_syn_only_data=bool(self.syn_data),
        )


def hex_bytes(value: object, what: str) -> bytes:
    """Bytes from a hex string in a control message, or ControlError."""
    try:
        return bytes.fromhex(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ControlError(f"bad {what} {value!r}") from None


def expecting_validator(expect: dict[int, bytes]) -> TepValidator:
    """The default validity rule (§4.5), plus: the peer's data for a TEP in ``expect`` must
    begin with the expected prefix. RFC 8548 §3.5: an active opener that offered resumption
    ignores an answer with the wrong identifier half; when it was the only TEP, ENO is off."""

    def valid(tep_id: int, local: tuple[TepSuboption, ...], peer: tuple[TepSuboption, ...]
              ) -> bool:
        if not default_validator(tep_id, local, peer):
            return False
        prefix, data = expect.get(tep_id), peer[0].data
        return prefix is None or data is None or data.startswith(prefix)

    return valid


@dataclass(frozen=True, kw_only=True)
class Result:
    """What the hook knows about one connection (the §4.2 / §4.8 / §5.1 API inputs)."""

    local: Addr
    remote: Addr
    active: bool  # this host sent the first SYN
    state: str  # negotiation.State value
    outcome: str | None = None  # "negotiated" | "fallback" | "aborted" | None (not yet)
    reason: str | None = None  # FallbackReason value (or AbortReason for aborts)
    fallback: str | None = None  # for aborts: the ENO failure behind them
    detail: str = ""
    role: str | None = None  # "A" | "B"
    tep_id: int | None = None
    tep_byte: int | None = None  # §5.1: session ID byte 0, with B's v bit
    transcript: str = ""  # hex, §4.8: A's SYN ENO option | B's SYN ENO option
    peer_a: bool | None = None  # the peer's application-aware bit (§4.2 API)
    peer_b: bool | None = None
    peer_data: str = ""  # hex: the peer's suboption data for the negotiated TEP
    local_data: str = ""  # hex: ours
    # The peer kept sending non-SYN ENO after this end fell back on a first ACK without ENO:
    # the path stripped only that ACK and the peer believes encryption is on (see stream.py).
    peer_eno_after_fallback: bool = False
    error: str | None = None  # the hook could not follow this connection (its core failed)
    packets: int = 0  # segments of this connection the hook has seen (handshake phase only)
    # §4.7 verdict on the peer's SYN data: "accepted", "discarded:<reason>", "" (none came)
    syn_data: str = ""
    # No outcome yet, but the peer's SYN data was accepted: role, tep_id, transcript and the
    # suboption data are what the SYN exchange decided (§4.5), so the SYN TEP can start
    # before the first ACK segment; the final outcome must then confirm them (§4.6).
    tentative: bool = False

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["local"], out["remote"] = list(self.local), list(self.remote)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Result:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["local"] = (str(data["local"][0]), int(data["local"][1]))
        values["remote"] = (str(data["remote"][0]), int(data["remote"][1]))
        return cls(**values)

    @property
    def transcript_bytes(self) -> bytes:
        return bytes.fromhex(self.transcript)

    @property
    def peer_data_bytes(self) -> bytes:
        return bytes.fromhex(self.peer_data)


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def decode(data: bytes) -> dict[str, Any]:
    try:
        message = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ControlError(f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ControlError("a message is one JSON object")
    return message


def address(name: str) -> str:
    """The abstract socket address for ``name`` (leading NUL: not a file)."""
    return "\0" + name


class HookClient:
    """A blocking client of the hook in this host's network namespace."""

    def __init__(self, name: str = DEFAULT_NAME, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(address(name))
        except OSError as exc:
            self.sock.close()
            raise HookUnavailableError(f"no ENO hook on @{name}: {exc}") from None
        self._next_id = 0

    def __enter__(self) -> HookClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        self._next_id += 1
        message = {"op": op, "id": self._next_id, **args}
        try:
            self.sock.send(encode(message))
            while True:
                data = self.sock.recv(MAX_MESSAGE)
                if not data:
                    raise HookUnavailableError("the ENO hook closed the control connection")
                reply = decode(data)
                if reply.get("id") == self._next_id:
                    break
        except OSError as exc:
            raise HookUnavailableError(f"control channel failed: {exc}") from None
        if not reply.get("ok"):
            raise ControlError(f"hook refused {op}: {reply.get('error')}")
        return reply

    def listen(self, port: int, settings: Settings) -> None:
        self.request("listen", port=port, settings=settings.to_json())

    def unlisten(self, port: int) -> None:
        self.request("unlisten", port=port)

    def announce(self, port: int, settings: Settings, ttl: float = 30.0,
                 wait: bool = True) -> None:
        """``wait=False`` sends a one-way message (no reply, one round trip less): the hook
        reads pending control messages before it treats a SYN as unannounced."""
        if wait:
            self.request("announce", port=port, settings=settings.to_json(), ttl=ttl)
            return
        message = {"op": "announce", "port": port, "settings": settings.to_json(), "ttl": ttl,
                   "noreply": True}
        try:
            self.sock.send(encode(message))
        except OSError as exc:
            raise HookUnavailableError(f"control channel failed: {exc}") from None

    def cancel(self, port: int) -> None:
        self.request("cancel", port=port)

    def answer(self, port: int, tep_id: int, key: bytes, data: bytes, ttl: float,
               wait: bool = False) -> None:
        """Let listener ``port`` answer one SYN whose ``tep_id`` data begins with ``key``
        with ``data`` (passive resumption, RFC 8548 §3.5); one-way unless ``wait``."""
        self._send_op("answer", wait, port=port, tep_id=tep_id, key=key.hex(),
                      data=data.hex(), ttl=ttl)

    def unanswer(self, port: int, tep_id: int, key: bytes, wait: bool = False) -> None:
        self._send_op("unanswer", wait, port=port, tep_id=tep_id, key=key.hex())

    def _send_op(self, op: str, wait: bool, **args: Any) -> None:
        if wait:
            self.request(op, **args)
            return
        try:
            self.sock.send(encode({"op": op, **args, "noreply": True}))
        except OSError as exc:
            raise HookUnavailableError(f"control channel failed: {exc}") from None

    def result(self, local: Addr, remote: Addr, wait: float = 0.0) -> Result | None:
        reply = self.request("result", local=list(local), remote=list(remote), wait=wait)
        data = reply.get("result")
        return Result.from_json(data) if data else None

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.request("stats")["stats"]
        return stats
