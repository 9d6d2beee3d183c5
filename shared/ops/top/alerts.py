"""The stack's Prometheus alerts, as ``stack-top`` shows them (``[prometheus] enabled``).

``GET /api/v1/alerts`` is asked in a thread of its own, at most every ``every_s``
and with a short timeout, so a Prometheus that is down or slow never holds up a
refresh: ``AlertWatch.poll()`` returns at once with the last answer, or with why
there is none (which the view says).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

EVERY_S = 3.0  # between two questions to Prometheus
TIMEOUT_S = 1.0  # for one answer; a slower Prometheus counts as not answering


@dataclass(frozen=True)
class Alert:
    """One active alert: its name, ``firing`` or ``pending``, what it is about, its summary."""

    name: str
    state: str
    about: str  # program, client_id or symbol label, else the instance
    summary: str
    severity: str


@dataclass(frozen=True)
class Alerts:
    """What the view shows: the active alerts (firing first), or why there are none to show."""

    status: str  # "" when Prometheus answered, else e.g. "no answer from ... (timed out)"
    alerts: tuple[Alert, ...] = ()

    @property
    def firing(self) -> list[Alert]:
        """The alerts firing (not pending)."""
        return [a for a in self.alerts if a.state == "firing"]


def parse(doc: Any) -> tuple[Alert, ...]:
    """The alerts of an ``/api/v1/alerts`` answer, firing first, then by name; ValueError if it is not one."""
    try:
        raw = doc["data"]["alerts"]
        out = []
        for a in raw:
            labels, notes = a.get("labels", {}), a.get("annotations", {})
            about = next((labels[k] for k in ("program", "client_id", "symbol", "instance") if k in labels), "")
            out.append(Alert(str(labels["alertname"]), str(a.get("state", "")), str(about),
                             str(notes.get("summary", "")), str(labels.get("severity", ""))))
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"not an alerts answer ({e!r})") from None
    return tuple(sorted(out, key=lambda a: (a.state != "firing", a.name, a.about)))


def fetch(url: str, timeout: float) -> tuple[Alert, ...]:
    """Ask Prometheus at ``url`` for its alerts; OSError, ValueError or HTTPException when it cannot."""
    with urllib.request.urlopen(f"{url}/api/v1/alerts", timeout=timeout) as r:
        return parse(json.load(r))


class AlertWatch:
    """Keeps the latest answer of one Prometheus, asked in the background."""

    def __init__(self, url: str, every_s: float = EVERY_S, timeout_s: float = TIMEOUT_S,
                 ask: Callable[[str, float], tuple[Alert, ...]] = fetch,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url, self.every_s, self.timeout_s, self.ask, self.clock = url, every_s, timeout_s, ask, clock
        self.state = Alerts(f"asking Prometheus at {url}")
        self.asked_at: float | None = None
        self._busy = threading.Lock()

    def poll(self) -> Alerts:
        """The latest answer; asks again (in a thread) when the last question is ``every_s`` old
        and answered. A question still unanswered after its timeout is said so."""
        now = self.clock()
        if self._busy.locked():
            if self.asked_at is not None and now - self.asked_at > self.timeout_s + 1.0:
                self.state = Alerts(f"Prometheus at {self.url} is slow: no answer in {now - self.asked_at:.0f} s")
        elif self.asked_at is None or now - self.asked_at >= self.every_s:
            self._busy.acquire()
            self.asked_at = now
            threading.Thread(target=self._ask, name="alerts", daemon=True).start()
        return self.state

    def _ask(self) -> None:
        try:
            self.state = Alerts("", self.ask(self.url, self.timeout_s))
        except (OSError, ValueError, http.client.HTTPException) as e:
            why = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
            self.state = Alerts(f"no answer from Prometheus at {self.url} ({why})")
        finally:
            self._busy.release()
