"""Which client process owns each client_id at the ordermanager; no I/O.

A logon may name its ``instance`` (new at each process start). The first
instance of a client_id owns it; a logon from another instance takes it over,
and from then on the superseded one is refused, so two processes never
interleave orders under one name. A logon without an instance changes nothing.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

SUPERSEDED_MAX = 64  # superseded instances remembered per client_id

Verdict = Literal["accept", "take_over", "refuse"]


class Owners:
    """The owning instance of each client_id, and the ones it superseded."""

    def __init__(self, remember: int = SUPERSEDED_MAX) -> None:
        self.owner: dict[str, str] = {}
        self.superseded: dict[str, deque[str]] = {}
        self.remember = remember

    def logon(self, client_id: str, instance: str | None) -> Verdict:
        """Judge a logon and record its outcome: ``take_over`` when it supersedes another instance."""
        if instance is None:
            return "accept"
        if instance in self.superseded.get(client_id, ()):
            return "refuse"
        current = self.owner.get(client_id)
        self.owner[client_id] = instance
        if current is None or current == instance:
            return "accept"
        self.superseded.setdefault(client_id, deque(maxlen=self.remember)).append(current)
        return "take_over"


def taken_over(client_id: str) -> str:
    """The detail of the ``unauthorized`` reject a superseded instance gets."""
    return f"client_id {client_id} taken over by a newer instance"
