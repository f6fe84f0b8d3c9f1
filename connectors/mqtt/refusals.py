"""A publish the broker refuses: the record on trial, the backoff between trials, the log lines.

An MQTT 5 broker may refuse a publish in its PUBACK (reason code 0x80 or
more: not authorized, quota exceeded, ...). The refused record goes back in
its place among the records still to publish, so it stays in the snapshot,
and is handed to the broker again alone, *on trial*, after
:data:`RETRY_FIRST` seconds, then twice as long each time up to
:data:`RETRY_MAX`; the records behind it wait until the broker accepts it.
Each refusal is reported (:attr:`Refusals.reports`) and logged at once,
then at most once per :data:`REFUSAL_LOG_EVERY` while it lasts. MQTT 3.1.1
has no refusals. See docs/delivery.md, "A refused publish is never dropped".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("connectors.mqtt")

RETRY_FIRST, RETRY_MAX = 1.0, 60.0
"""Seconds before the first trial of a refused record, and the most between trials."""

REFUSAL_LOG_EVERY = 60.0
"""While a refusal lasts, at most one log line per this many seconds."""


@dataclass
class Refusal:
    """The refusal that holds a partition's records back: what, why, since when, the next trial."""

    topic: str
    reason: str
    since: float
    retry_at: float
    delay: float
    next_log: float
    refusals: int = 1
    on_trial: int | None = None
    """Sequence number of the refused record handed to the broker alone, if any."""


class Refusals:
    """The refusals of one output partition; the worker's alone (no lock)."""

    def __init__(self, label: str) -> None:
        self._label = label
        self.current: Refusal | None = None
        """The refusal holding the records back, if any."""
        self.reports: list[tuple[str, str]] = []
        """``(topic, reason)`` of each refusal since the caller last took them."""

    def trial_due(self, now: float) -> bool:
        """Whether the refused record may be handed to the broker again now (none is on trial)."""
        current = self.current
        return current is not None and current.on_trial is None and now >= current.retry_at

    def refused(self, seq: int, topic: str, reason: str, now: float, waiting: int) -> None:
        """The broker refused record ``seq``; ``waiting`` records (it included) wait to be published."""
        self.reports.append((topic, reason))
        current = self.current
        if current is None:
            self.current = Refusal(topic, reason, since=now, retry_at=now + RETRY_FIRST, delay=RETRY_FIRST,
                                   next_log=now + REFUSAL_LOG_EVERY)
            log.error("%s: the broker refused to publish on %r: %s; the record waits in the snapshot with "
                      "the %d ready behind it, retried after %gs and then less often, at most %gs apart, "
                      "until the broker accepts it", self._label, topic, reason, waiting - 1,
                      RETRY_FIRST, RETRY_MAX, extra={"partition": self._label, "state": "refused"})
        elif current.on_trial == seq:
            current.topic, current.reason, current.on_trial = topic, reason, None
            current.refusals += 1
            current.delay = min(current.delay * 2, RETRY_MAX)
            current.retry_at = now + current.delay
            if now >= current.next_log:
                current.next_log = now + REFUSAL_LOG_EVERY
                log.warning("%s: the broker still refuses to publish on %r after %.0fs (%d refusals): %s; "
                            "%d records wait, retrying in %.0fs", self._label, topic, now - current.since,
                            current.refusals, reason, waiting, current.delay,
                            extra={"partition": self._label, "state": "refused"})

    def accepted(self, seq: int, now: float, waiting: int) -> bool:
        """The broker accepted record ``seq``: whether that ends the refusal (it was on trial)."""
        current = self.current
        if current is None or current.on_trial != seq:
            return False
        self.current = None
        log.info("%s: the broker accepted the refused record on %r after %.0fs (%d refusals); publishing the "
                 "%d records that waited", self._label, current.topic, now - current.since,
                 current.refusals, waiting, extra={"partition": self._label, "state": "accepted"})
        return True

    def take_reports(self) -> list[tuple[str, str]]:
        reports, self.reports = self.reports, []
        return reports
