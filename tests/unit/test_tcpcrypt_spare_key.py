"""tcpcrypt role B's key pair made ahead (``tcpcrypt.ephemeral``, RFC 8548 §3.3) and the
provider that makes it between connections (testbed/apps/proto_tcpcrypt.py)."""

from __future__ import annotations

import pytest

from testbed.apps.proto_tcpcrypt import SPARE_KEYS, TcpcryptProvider
from testbed.eno.control import Result
from testbed.teps import base
from testbed.teps.base import HandshakeComplete, Role, TepContext
from testbed.teps.tcpcrypt.constants import AeadId, TepId
from testbed.teps.tcpcrypt.core import TcpcryptCore
from testbed.teps.tcpcrypt.keys import generate_ephemeral
from testbed.teps.tcpcrypt.loopback import ScriptedRandom
from testbed.teps.tcpcrypt.options import OPT_EPHEMERAL

from .test_tcpcrypt_core import N_A, N_B, PRIV_A, PRIV_B, PUB_B, core


def test_role_b_answers_with_the_key_made_ahead() -> None:
    # The vector of test_handshake_vectors_both_directions, with B's private key given as
    # an option: B draws only N_B from its random source (ScriptedRandom has nothing more).
    a = core(Role.A, rand=ScriptedRandom([N_A, PRIV_A]), ciphers=(AeadId.AES_128_GCM,))
    key = generate_ephemeral(TepId.X25519, ScriptedRandom([PRIV_B]))
    b = core(Role.B, rand=ScriptedRandom([N_B]), ephemeral=key)
    a.start(0.0)
    b.start(0.0)
    events = b.receive_data(a.data_to_send(), 0.0)
    init2 = b.data_to_send()
    assert init2 == bytes.fromhex("097105e00000004a0001") + N_B + PUB_B
    assert a.receive_data(init2, 0.0) == events == [HandshakeComplete(b.session_id or b"")]


def test_a_key_made_ahead_is_refused_for_role_a_or_another_tep() -> None:
    key = generate_ephemeral(TepId.X25519, ScriptedRandom([PRIV_B]))
    with pytest.raises(ValueError, match="role B only"):
        core(Role.A, ephemeral=key)
    with pytest.raises(ValueError, match="another TEP"):
        core(Role.B, TepId.P256, ephemeral=key)
    with pytest.raises(ValueError, match="must be an EphemeralKey"):
        core(Role.B, ephemeral=PRIV_B)


def _passive_result(local_data: str = "") -> Result:
    return Result(local=("10.0.0.2", 5000), remote=("10.0.0.1", 40000), active=False,
                  state="established", local_data=local_data)


def test_the_provider_hands_each_key_made_ahead_to_one_passive_connection() -> None:
    spec = base.get("tcpcrypt-x25519")
    provider = TcpcryptProvider(None)
    for _ in range(SPARE_KEYS + 3):
        provider.prepare(spec)  # at most SPARE_KEYS are kept
    peer = ("10.0.0.1", 40000)
    keys = [provider.context_options(spec, role=Role.B, peer=peer, result=_passive_result())
            .get(OPT_EPHEMERAL) for _ in range(SPARE_KEYS + 1)]
    assert all(k is not None for k in keys[:SPARE_KEYS]) and keys[SPARE_KEYS] is None
    assert len({k.public for k in keys[:SPARE_KEYS]}) == SPARE_KEYS  # type: ignore[union-attr]
    # The connection without one makes its own key, as before.
    ctx = TepContext(Role.B, b"T", options=provider.context_options(
        spec, role=Role.B, peer=peer, result=_passive_result()))
    assert OPT_EPHEMERAL not in ctx.options
    TcpcryptCore(ctx, spec.tep_id)
