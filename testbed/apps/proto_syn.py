"""Protocol arms whose SYN carries the SYN TEP's first flight (RFC 8547 §4.7), registered at import.

Neither RFC 8548 nor draft-ietf-tcpinc-use-tls defines SYN data, so every arm here is a labelled
variant (``variant_label`` says "beyond RFC 8548" or "beyond the use-tls draft") and none is a
default; the stream side is testbed/synstream.py.

    tcpcrypt-syn   tcpcrypt X25519: Init1 rides on the SYN, B answers Init2 right behind its
                   SYN-ACK (before A's ACK); a fresh key exchange every time.
    tcpcrypt-resume-syn
                   tcpcrypt X25519 resumption (RFC 8548 §3.5) with the request on the SYN: the
                   client presumes the server's answer (its identifier half with a 0-byte
                   nonce), so ss[i] and nonce_a alone give the keys and the SYN carries the
                   request's frame; the server answers at once. The first connection of a
                   client process is a tcpcrypt-syn one and seeds the secret; records say
                   ``resumed`` and ``early_data_accepted`` (the request rode on the SYN).
    tls-syn        TCP-use-TLS (TEP 0x30): the ClientHello rides on the SYN, the server's
                   flight follows the SYN-ACK.
    tls-0rtt-syn   as tls-syn with resumption and the request as 0-RTT early data in the SYN;
                   the server answers at once (0.5-RTT data). The first connection of a client
                   process fetches the ticket (no early data); records say ``resumed`` and
                   ``early_data_accepted``.
    tls-0rtt-syn-noantireplay
                   tls-0rtt-syn with OpenSSL's anti-replay off on the server (SSL_OP_NO_ANTI_REPLAY:
                   tickets are not single-use), for ``tcpinc bench replay`` only.

Linux sends data on a SYN without a TFO cookie option only in its no-cookie TFO modes; the
workload sets them on the two hosts for the run and restores them after (``HOST_SYSCTLS``,
recorded in each record as ``syn_sysctls``): client 0x1 | 0x2 | 0x4 (TFO_CLIENT_NO_COOKIE),
server 0x1 | 0x2 | 0x200 (TFO_SERVER_COOKIE_NOT_REQD). These arms run on the nfqueue ENO
datapath only (the bpf program does not judge SYN data).

Records add ``syn_data``: "acked" or "not_acked" for the client (whether the SYN-ACK
acknowledged the SYN data; "not_acked" means the server's hook discarded it and the kernel sent
it again, §4.7), "accepted" in the server's view.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from testbed import stream as eno_stream
from testbed import synstream
from testbed.apps import proto_tcpcrypt, proto_tls
from testbed.apps.registry import ConnInfo, conn_info, register_transport
from testbed.errors import ConfigError
from testbed.teps.tcpcrypt.constants import TEPS, TepId
from testbed.teps.tls.constants import TEP_NAME as TLS_TEP

Addr = tuple[str, int]
TFO_CLIENT_NO_COOKIE = 0x4
TFO_SERVER_COOKIE_NOT_REQD = 0x200
HOST_SYSCTLS = {
    "client": {"net.ipv4.tcp_fastopen": str(0x3 | TFO_CLIENT_NO_COOKIE)},
    "server": {"net.ipv4.tcp_fastopen": str(0x3 | TFO_SERVER_COOKIE_NOT_REQD)},
}
TCPCRYPT_TEP = TEPS[TepId.X25519].name  # REQUIRED by RFC 8548 §5
BEYOND_8548 = "beyond RFC 8548"
BEYOND_TLS = "beyond the use-tls draft"
SYN_TLS_PROFILE_NOREPLAY = "0rtt-noantireplay"


class SynConn:
    """A SYN-data stream behind the workload's connection interface; ``info`` is read live
    (a server's session ID may follow its setup after 0-RTT, testbed/tepio.py)."""

    def __init__(self, stream: eno_stream.Stream, arm: SynArm, *, client: bool) -> None:
        self.stream = stream
        self.arm = arm
        self.client = client

    @property
    def info(self) -> ConnInfo:
        raw = self.stream.info
        info = conn_info(raw)
        if raw.tep is None:
            return info  # reconnected without ENO: a plain stream, not the variant
        info.extras = {"variant_label": self.arm.variant_label, "syn_data": raw.syn_data,
                       "resumed": raw.resumed, "early_data_accepted": raw.early_data_accepted}
        if raw.early_data_accepted and "syn_data_sent" in raw.phases:
            info.phases["request_sent"] = raw.phases["syn_data_sent"]  # on the SYN
        if not self.arm.tls:
            nonce = SYN_RESUME_PROVIDER.nonce_len if self.arm.resume else None
            info.extras.update(proto_tcpcrypt.tcpcrypt_keys(raw, nonce))
        return info

    def sendall(self, data: bytes) -> None:
        self.stream.sendall(data)

    def recv(self, size: int) -> bytes:
        return self.stream.recv(size)

    @property
    def _ticket_follows(self) -> bool:
        """As the tls-0rtt arm's (proto_tls_arm.TlsConn): a ticket follows accepted 0-RTT."""
        return self.client and self.arm.tls and bool(self.stream.info.early_data_accepted)

    @property
    def close_before_next(self) -> bool:
        """After a ticket that follows accepted 0-RTT, and on the tcpcrypt-resume arm's
        client (proto_tcpcrypt.TcpcryptConn: the server's answer for the next resumption is
        pushed before its end of stream)."""
        return self._ticket_follows or (self.client and not self.arm.tls
                                        and bool(self.arm.resume))

    def close(self) -> None:
        if self._ticket_follows:
            # As the tls-0rtt arm: wait for the server's close_notify, so its ticket (sent
            # after our Finished) is in the cache for the next connection (proto_tls.py).
            proto_tls.TlsConn(self.stream, self.arm.tls_arm(), client=True).close()
            return
        self.stream.close()

    @property
    def local_port(self) -> int:
        return self.stream.local_port


class SynResumeProvider(proto_tcpcrypt.TcpcryptProvider):
    """tcpcrypt resumption whose keys exist before the SYN-ACK (beyond RFC 8548 §3.5).

    As the active opener it offers resumption with an 8-byte nonce_a and presumes the answer
    (``presume_answer``, testbed/synstream.py): the other half of the identifier and no nonce,
    so sn[i] = nonce_a and the SYN's frames are protected before B has said anything. As the
    passive opener its cache pushes exactly such answers (a 0-byte nonce_b) to the hook.
    RFC 8548 §3.5 asks for an 8-byte default nonce unless secret reuse is impossible; here
    each ss[i] is single-use, so only a replayed SYN can meet the same keys again, which the
    single-use answers turn into a fresh exchange (the README says what this gives up)."""

    presume_answer = True


SYN_RESUME_PROVIDER = SynResumeProvider(proto_tcpcrypt.HostCache(
    proto_tcpcrypt.HookPublisher(), nonce_len=0))


@dataclass(frozen=True, kw_only=True)
class SynArm:
    name: str
    tls: bool
    early_data: bool = False
    anti_replay: bool = True
    resume: bool = False
    variant_label: str

    def tls_arm(self) -> proto_tls.TlsArm:
        return proto_tls.TlsArm(name=self.name, eno=True, early_data=self.early_data,
                                variant_label=self.variant_label)

    @property
    def tep(self) -> str:
        return TLS_TEP if self.tls else TCPCRYPT_TEP

    def provider(self, first: bytes) -> Any:
        if not self.tls:
            return SYN_RESUME_PROVIDER if self.resume else proto_tcpcrypt.FRESH_PROVIDER
        if not self.anti_replay:
            return _NoReplayTlsProvider(self.tls_arm(), first)
        return proto_tls.TlsProvider(self.tls_arm(), first)


@dataclass(frozen=True)
class _NoReplayTlsProvider(proto_tls.TlsProvider):
    """The TLS provider with a server identity whose anti-replay is off."""

    def context_options(self, spec: Any, *, role: Any, peer: Addr, result: Any
                        ) -> dict[str, Any]:
        options = super().context_options(spec, role=role, peer=peer, result=result)
        if "server_identity" in options:
            options["server_identity"] = proto_tls.server_identity(SYN_TLS_PROFILE_NOREPLAY)
        return options


@dataclass
class SynTransport:
    """One SYN-data arm (testbed/synstream.py) for the workload apps."""

    arm: SynArm
    policy: str = "opportunistic"
    uses_eno: bool = True
    host_sysctls: Any = None
    listener: synstream.SynListener | None = None

    def __post_init__(self) -> None:
        self.host_sysctls = HOST_SYSCTLS

    @property
    def name(self) -> str:
        return self.arm.name

    @property
    def description(self) -> str:
        return self.arm.variant_label

    def config(self, *, server: bool, first: bytes = b"",
               timeout: float = proto_tls.HANDSHAKE_TIMEOUT) -> eno_stream.StreamConfig:
        tep = self.arm.tep
        return eno_stream.StreamConfig(
            policy=eno_stream.Policy(self.policy), teps=(tep,), syn_data=(tep,),
            providers={tep: self.arm.provider(first)}, handshake_timeout=timeout,
            early_handoff=server and self.arm.early_data,
        )

    def connect(self, addr: Addr, timeout: float, first: bytes) -> tuple[SynConn, int]:
        config = self.config(server=False, first=first, timeout=timeout)
        on_syn = first if self.arm.resume else b""
        stream = synstream.connect(addr, config, timeout=timeout, first=on_syn)
        # 0-RTT arms hand the request to TLS (early data when the ticket allows it, else
        # after the handshake); a resumed tcpcrypt-resume-syn stream sent it on the SYN;
        # after a reconnect without ENO it is still to be sent.
        taken = (self.arm.early_data and stream.info.tep == TLS_TEP) or bool(
            self.arm.resume and stream.info.early_data_accepted)
        return SynConn(stream, self.arm, client=True), len(first) if taken else 0

    def listen(self, sock: socket.socket) -> None:
        if self.arm.tls:
            profile = "0rtt" if self.arm.early_data else "draft"
            if not self.arm.anti_replay:
                profile = SYN_TLS_PROFILE_NOREPLAY
            proto_tls.server_identity(profile)  # key and certificate before the first SYN
        self.listener = synstream.SynListener(sock, self.config(server=True))

    def accept(self, sock: socket.socket, addr: Addr | None = None) -> SynConn:
        if self.listener is None:
            raise ConfigError(f"{self.arm.name}: accept before listen")
        return SynConn(self.listener.wrap(sock, addr), self.arm, client=False)


ARMS = (
    SynArm(name="tcpcrypt-syn", tls=False,
           variant_label=f"tcpcrypt X25519 with Init1 as SYN data of the SYN TEP and Init2 "
                         f"right behind the SYN-ACK (RFC 8547 §4.7; {BEYOND_8548})"),
    SynArm(name="tcpcrypt-resume-syn", tls=False, early_data=True, resume=True,
           variant_label=f"tcpcrypt X25519 resumption with the request as SYN data under keys "
                         f"from ss[i] and nonce_a alone (RFC 8547 §4.7; {BEYOND_8548})"),
    SynArm(name="tls-syn", tls=True,
           variant_label=f"TCP-use-TLS with the ClientHello as SYN data of the SYN TEP "
                         f"(TEP 0x30, non-standard; RFC 8547 §4.7; {BEYOND_TLS})"),
    SynArm(name="tls-0rtt-syn", tls=True, early_data=True,
           variant_label=f"TCP-use-TLS with the ClientHello and 0-RTT early data as SYN data "
                         f"of the SYN TEP (TEP 0x30, non-standard; RFC 8547 §4.7; {BEYOND_TLS})"),
    SynArm(name="tls-0rtt-syn-noantireplay", tls=True, early_data=True, anti_replay=False,
           variant_label=f"TCP-use-TLS, ClientHello and 0-RTT early data as SYN data, OpenSSL "
                         f"anti-replay off (TEP 0x30, non-standard; {BEYOND_TLS})"),
)
SYN_ARMS = tuple(arm.name for arm in ARMS)


def _register() -> None:
    for arm in ARMS:
        def factory(policy: str, arm: SynArm = arm) -> SynTransport:
            return SynTransport(arm, policy=policy)

        register_transport(arm.name, factory("opportunistic"), factory)


_register()
