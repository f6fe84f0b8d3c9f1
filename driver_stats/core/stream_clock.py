"""The stream's event time: how far the whole input has read, as far as the whole flow has processed.

A driver's intervals close once the *stream* has passed them
(:mod:`driver_stats.core.windows`), also while the driver itself is quiet.
The stream time comes from the input, never from the wall clock: over MQTT it
is the input's low watermark (:mod:`connectors.mqtt.watermarks`), the event
time every input partition had read before the dataflow finished an epoch,
lowest first. So a flow reading behind its producers (a backlog after an
outage, a frozen broker, the unacknowledged-message cap, a partition behind
the others, a restart) moves its clock at the pace it reads, and finds late
only what was late when it was published. A caught-up, idle input moves it
with the wall clock (its partitions' probes).

Tests and history replay give any function of their own (a fixed or
scripted time).
"""

from __future__ import annotations

import math
import time
from typing import Callable

MAX_NOTIFY_DELAY = 5.0
"""Seconds a window step sleeps at most before looking at the stream time again."""


class StreamClock:
    """``now()`` = the stream time; :meth:`to_wall` says when to look again.

    >>> clock = StreamClock(lambda: 100.0, wall=lambda: 5000.0)
    >>> clock.now(), clock.to_wall(102.0), clock.to_wall(99.0), clock.to_wall(1e9)
    (100.0, 5002.0, 5000.0, 5005.0)
    """

    def __init__(self, stream_time: Callable[[], float], wall: Callable[[], float] = time.time):
        self._stream_time = stream_time
        self._wall = wall

    def now(self) -> float:
        return self._stream_time()

    def to_wall(self, stream_time: float) -> float:
        """The wall time to look again for ``stream_time``.

        A caught-up stream moves about as fast as the wall clock; a backlog
        moves it faster, so the wait is capped at :data:`MAX_NOTIFY_DELAY`.
        """
        ahead = stream_time - self.now()
        if math.isnan(ahead):
            ahead = math.inf
        return self._wall() + min(max(ahead, 0.0), MAX_NOTIFY_DELAY)
