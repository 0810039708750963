"""What applications register with the ENO hook over the control channel (control.py):
listeners with their settings and pushed resumption answers, and announced active opens.

``Registrations`` is the part of ``HookEngine`` (engine.py) that keeps them; the packet path
reads them there. Passive resumption (RFC 8548 §3.5) and the limits are described in
engine.py's module docstring.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from functools import partial

from testbed.eno.config import EnoConfig
from testbed.eno.control import Settings
from testbed.eno.option import TepSuboption

MAX_ANSWERS = 4096  # pushed resumption answers kept per listener (oldest dropped first)


@dataclass
class Answer:
    data: bytes
    deadline: float


@dataclass
class Listener:
    settings: Settings
    config: EnoConfig
    owner: object
    # (TEP id, key) -> answer; keys are prefixes of the peer's suboption data (§3.5 halves)
    answers: dict[tuple[int, bytes], Answer] = field(default_factory=dict)
    key_lengths: set[int] = field(default_factory=set)


@dataclass
class Announcement:
    config: EnoConfig
    deadline: float



class Registrations:
    """Listeners, answers and announcements; the engine owns the containers."""

    listeners: dict[int, Listener]
    announcements: dict[int, Announcement]
    counts: Counter[str]
    _now: float  # time of the segment being handled (answers expire by it)

    def listen(self, port: int, settings: Settings, owner: object) -> None:
        current = self.listeners.get(port)
        if current is not None and current.owner is not owner:
            raise ValueError(f"port {port} is already registered by another application")
        config = replace(settings.eno_config(), answerer=partial(self._answer, port))
        listener = Listener(settings, config, owner)
        if current is not None:  # new settings, same application: pushed answers stay
            listener.answers, listener.key_lengths = current.answers, current.key_lengths
        self.listeners[port] = listener

    def answer(self, port: int, tep_id: int, key: bytes, data: bytes, deadline: float) -> None:
        """Answer the next SYN to ``port`` whose ``tep_id`` data begins with ``key`` with
        ``data`` (RFC 8548 §3.5 passive resumption; see the module docstring)."""
        listener = self.listeners.get(port)
        if listener is None:
            raise ValueError(f"port {port} has no listener")
        if not key or not data:
            raise ValueError("an answer needs a key and data")
        TepSuboption(tep_id, data)  # refuses an invalid TEP id now, not on the packet path
        while len(listener.answers) >= MAX_ANSWERS:
            del listener.answers[next(iter(listener.answers))]
            self.counts["answers_evicted"] += 1
        listener.answers[(tep_id, bytes(key))] = Answer(bytes(data), deadline)
        listener.key_lengths.add(len(key))
        self.counts["answers_pushed"] += 1

    def unanswer(self, port: int, tep_id: int, key: bytes) -> bool:
        listener = self.listeners.get(port)
        return listener is not None and listener.answers.pop((tep_id, key), None) is not None

    def _answer(
        self, port: int, offer: TepSuboption, peer: tuple[TepSuboption, ...]
    ) -> TepSuboption | None:
        """The listener's ``answerer`` (config.py): a pushed answer taken by the SYN's data,
        else the listener's own suboption (RFC 8548 §3.5: MAY answer fresh, same TEP)."""
        listener = self.listeners.get(port)
        data = peer[0].data if len(peer) == 1 else None
        if listener is None or data is None:
            return offer
        for size in sorted(listener.key_lengths):
            found = listener.answers.pop((offer.tep_id, data[:size]), None)
            if found is None:
                continue
            if found.deadline <= self._now:
                self.counts["answers_expired"] += 1
                break
            self.counts["answers_used"] += 1
            return TepSuboption(offer.tep_id, found.data)
        self.counts["answers_unknown"] += 1
        return offer

    def unlisten(self, port: int, owner: object) -> bool:
        current = self.listeners.get(port)
        if current is None or current.owner is not owner:
            return False
        del self.listeners[port]
        return True

    def announce(self, port: int, settings: Settings, now: float, ttl: float) -> None:
        # Built here, off the packet path; the core refuses now what it would refuse later.
        self.announcements[port] = Announcement(settings.eno_config(), now + ttl)

    def cancel(self, port: int) -> bool:
        return self.announcements.pop(port, None) is not None
