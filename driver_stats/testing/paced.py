"""Paced live traffic for recovery, outage and chaos runs, with its ground truth."""

from __future__ import annotations

import threading
import time

from driver_stats.traffic import COUNTED_KINDS, Traffic

from .live_flow import expected_stats, published_stats


class PacedTraffic(threading.Thread):
    """Publishes ``count`` generated messages at ``rate``/s, event times = now + ``clock_offset``.

    Each on its driver's shard topic, as producers should (``plain=True``: on
    the plain topics). ``clock_offset`` is the producers' clock against the
    host's: -90 for producers 90 s behind, minus a year for last year's
    history replayed live, in real time.
    """

    def __init__(self, publisher, *, count: int, rate: float, drivers: int, window: int, lateness: int,
                 seed: int = 11, duplicates: float = 0.05, plain: bool = False, clock_offset: float = 0.0):
        super().__init__(daemon=True)
        self.publisher = publisher
        self.plain = plain
        self.clock_offset = clock_offset
        self.traffic = Traffic(seed, drivers, start=time.time() + 0.5 + clock_offset, rate=rate, window=window,
                               lateness=lateness, duplicates=duplicates)
        self.messages = list(self.traffic.events(count))
        self.window = window

    def run(self) -> None:
        for message in self.messages:
            delay = message.at - self.clock_offset - time.time()
            if delay > 0:
                time.sleep(delay)
            topic = message.topic if self.plain else message.shard_topic
            self.publisher.client.publish(topic, message.payload, qos=1)

    @property
    def last_due(self) -> float:
        """The host's time the last message is due."""
        return self.messages[-1].at - self.clock_offset

    def expected(self) -> dict:
        return expected_stats([m.event for m in self.messages if m.kind in COUNTED_KINDS], self.window)


def compare(expected: dict, messages) -> dict[str, int]:
    """lost / wrong / conflicting / duplicate_records of what was published against the truth."""
    got, repeats, conflicts = published_stats(messages)
    lost = len(set(expected) - set(got))
    wrong = sum(1 for key, stats in got.items() if expected.get(key) != stats)
    return {"lost": lost, "wrong": wrong, "conflicting": conflicts, "duplicate_records": repeats}
