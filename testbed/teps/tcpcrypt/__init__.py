"""tcpcrypt (RFC 8548) as a sans-IO TEP core.

Nothing is registered at import time: call ``register_all()`` (or register ``spec(tep_id)``
yourself) to add the four tcpcrypt TEPs to ``testbed.teps.base``'s registry.
"""

from __future__ import annotations

from functools import partial

from testbed.teps import base

from .constants import TEPS, AeadId, TepId
from .core import TcpcryptCore, UrgentData
from .keys import tep_params
from .options import TcpcryptOptions, local_suboption_data
from .resumption import CachedSession, ResumptionCache
from .state import State

__all__ = [
    "AeadId",
    "CachedSession",
    "ResumptionCache",
    "State",
    "TcpcryptCore",
    "TcpcryptOptions",
    "TepId",
    "UrgentData",
    "local_suboption_data",
    "register_all",
    "spec",
    "specs",
]


def spec(tep_id: int) -> base.TepSpec:
    """The registry entry for one tcpcrypt TEP id (RFC 8548 §7 Table 4)."""
    params = tep_params(tep_id)
    return base.TepSpec(
        tep_id=int(params.tep_id),
        name=params.name,
        standard=True,
        factory=partial(TcpcryptCore, tep_id=int(params.tep_id)),
    )


def specs() -> list[base.TepSpec]:
    """Entries for 0x21 P-256, 0x22 P-521, 0x23 X25519, 0x24 X448."""
    return [spec(tep_id) for tep_id in sorted(TEPS)]


def register_all() -> list[base.TepSpec]:
    """Register the four TEPs; ones already registered under the same name are left as they are.

    A different TEP holding one of these ids or names still makes ``base.register`` raise.
    """
    done = []
    for entry in specs():
        existing = base.by_id(entry.tep_id)
        if existing is not None and existing.name == entry.name:
            done.append(existing)
            continue
        done.append(base.register(entry))
    return done
