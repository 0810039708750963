"""A TLS server's SSL object made ahead of its connection (ServerIdentity.prepare)."""

from __future__ import annotations

from OpenSSL import SSL

from testbed.teps.tls.identity import SPARE_CONNECTIONS, ServerIdentity
from testbed.teps.tls.pair import tls_pair
from testbed.teps.tls.session_cache import TlsSessionCache


def test_prepare_keeps_at_most_the_spares_and_connection_takes_them() -> None:
    identity = ServerIdentity()
    for _ in range(SPARE_CONNECTIONS + 2):
        identity.prepare()
    spares = list(identity._spares)
    assert len(spares) == SPARE_CONNECTIONS
    taken = [identity.connection() for _ in range(SPARE_CONNECTIONS)]
    assert sorted(map(id, taken)) == sorted(map(id, spares))
    fresh = identity.connection()  # none left: made on the spot
    assert all(fresh is not s for s in spares)
    assert isinstance(fresh, SSL.Connection)


def test_a_core_on_a_spare_completes_its_handshake_and_resumes() -> None:
    identity = ServerIdentity(resumption=True)
    identity.prepare()
    spare = identity._spares[0]
    cache = TlsSessionCache()
    for round_ in range(2):  # the second handshake resumes from the first one's ticket
        link, a, b = tls_pair(client={"session_cache": cache},
                              server={"server_identity": identity})
        if round_ == 0:
            assert b._conn is spare and not identity._spares
        link.handshake()
        assert a.session_id == b.session_id is not None
        assert a.resumed is bool(round_) and b.resumed is bool(round_)
        # Closed as a connection ends (close_notify both ways): OpenSSL drops from the server's
        # cache the session of an SSL freed without one, and its single-use ticket with it.
        a.close()
        b.close()
        link.pump()
        identity.prepare()
