"""The stream's event time: how far the whole input has read, as far as the whole flow has processed.

A driver's intervals close once the *stream* has passed them
(:mod:`driver_stats.core.windows`), also while the driver itself is quiet.
The stream time comes from the input, never from the wall clock. Over MQTT
(:meth:`StreamClock.of_input`) it is, for each input partition, the later of

* its *watermark* (:mod:`connectors.mqtt.watermarks`): the event time it had
  read before the dataflow finished an epoch, i.e. once every worker
  processed what it read before; it comes once an epoch, and a caught-up,
  idle partition moves it with the wall clock (its probes);
* what this worker's window step has *processed* of it
  (:class:`ProcessedPositions`): the newest event time of the partition's
  events that the step has handled together with everything the partition
  sent this worker before them. It moves with every batch, so a record
  closes in the epoch that read the event that closed it, not in the next;

and the lowest over the partitions. So a flow reading behind its producers
(a backlog after an outage, a frozen broker, the unacknowledged-message cap,
a partition behind the others, a restart) moves its clock at the pace it
reads, and finds late only what was late when it was published.

A partition that has read nothing and is caught up (the input leaves it
out of its watermarks) is left out of the minimum: it neither holds the
stream back nor moves it, whatever the wall clock says (Flink's idle
sources are the model), until it reads something. One that has read
nothing and may still deliver a backlog (``-inf``: it has not shown
itself idle yet, as at a start) holds it back. With no partition read at
all there is no stream time yet (``-inf``). A flow without watermarks
(Bytewax's ``TestingSource``, the benchmarks: :data:`NO_WATERMARKS`)
follows the same rule on what its window step processed alone.

Only the wake-ups (:meth:`StreamClock.wake_at`) measure elapsed time, and
they do it on a monotonic timer: a step of the host's wall clock (NTP, a
resumed VM) moves no stream time and delays no wake-up.

Tests give any function of their own (a fixed or scripted time).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from types import MappingProxyType
from typing import Callable, Dict, Iterable, Mapping, Optional

NO_WATERMARKS: Mapping[int, float] = MappingProxyType({})
"""The watermarks of an input that publishes none: the stream time is what the window step processed."""


MAX_NOTIFY_DELAY = 5.0
"""Seconds a window step sleeps at most before looking at the stream time again."""

STALLED_POLL = 1.0
"""... and, once a caught-up stream has not moved for this many seconds, how
often a state key whose target is within :data:`MAX_NOTIFY_DELAY` looks
again. A stalled stream (an idle input, a stopped broker) comes back in one
jump: an idle input's watermark moves once an epoch, after its probes. A
key that slept the whole distance would sleep through that jump, and on
for up to :data:`MAX_NOTIFY_DELAY` more."""

BACKLOG_NOTIFY_DELAY = 1.0
"""... while the stream runs faster than the wall clock (a backlog, a replay),
until the cadence of its changes is known (:meth:`StreamClock.wake_at`)."""

BACKLOG_SPEED = 1.5
"""Stream seconds per wall second above which the stream is reading a backlog."""

SPEED_SAMPLE = 1.0
"""Wall seconds over which the stream's speed is measured."""

JUMP_MARGIN = 0.05
"""Seconds after a jump is due that a window step in a backlog looks."""

LATE_JUMP_POLL = 0.1
"""... and, while the jump is late, how often it looks again, for up to half
the cadence. A jump comes once an epoch, when the epoch before it is
committed, and that commit waits for the flow to process the epoch: under
load the gaps between jumps vary by a fifth or more (0.77-1.24 s measured
with 1 s epochs). Records closed after the jump, within its epoch, go out
when that epoch ends; looking late by one poll costs nothing, waiting for
the next jump or closing in the next epoch costs a whole epoch. (A key that
receives events closes at once anyway: this is for the quiet ones.)"""

JUMPS_MEASURED = 5
"""The cadence of the jumps is the median of the last this many gaps between them."""

SAME_JUMP = 0.2
"""Changes less than this many seconds after a jump are part of it (the
watermarks of several partitions arrive one after the other)."""

CONTINUOUS = 0.5
"""A stream whose changes come less than this many seconds apart (median)
moves with what the window step processes, not in an epoch's jumps (the
shortest epoch is 1 s): it is expected when its speed says."""


class StreamClock:
    """``now()`` = the stream time; :meth:`wake_at` says when to look again, on ``timer`` (monotonic seconds).

    >>> clock = StreamClock(lambda: 100.0, timer=lambda: 5000.0)
    >>> clock.now(), clock.wake_at(102.0), clock.wake_at(99.0), clock.wake_at(1e9)
    (100.0, 5002.0, 5000.0, 5005.0)

    A stream that reads a backlog (here 600 stream seconds per wall second,
    in one jump a second) is looked at again just after its next jump is due:

    >>> times = {"wall": 0.0, "stream": 1000.0}
    >>> clock = StreamClock(lambda: times["stream"], timer=lambda: times["wall"])
    >>> clock.wake_at(1600.0)
    5.0
    >>> for second in (1, 2, 3):
    ...     times.update(wall=float(second), stream=1000.0 + 600 * second)
    ...     _ = clock.wake_at(1e9)
    >>> times.update(wall=3.4)
    >>> clock.wake_at(3000.0), clock.wake_at(2800.5)
    (4.05, 4.05)
    """

    def __init__(self, stream_time: Callable[[], float], timer: Callable[[], float] = time.monotonic):
        self._stream_time = stream_time
        self._timer = timer  # elapsed time only: never the calendar
        self.positions: Optional[ProcessedPositions] = None
        """What this worker's window step processed, per input partition (:meth:`of_input`); else None."""
        self._watermarks: Optional[Callable[[], Mapping[int, float]]] = None
        self._worker = threading.local()  # .clock: the calling thread's worker's (of_input)
        self._speed = 1.0
        self._mark: tuple[float, float] | None = None  # (wall, stream) where the speed is measured from
        self._seen = -math.inf  # the stream time last seen
        self._jumped: float | None = None  # wall time the last jump was first seen
        self._changed = -math.inf  # wall time the stream was last seen to change
        self._gaps: deque[float] = deque(maxlen=JUMPS_MEASURED)  # wall seconds between the last jumps
        self._cadence: float | None = None  # their median, kept as they change (every key asks, per batch)

    @classmethod
    def of_input(cls, watermarks: Callable[[], Mapping[int, float]] = lambda: NO_WATERMARKS,
                 timer: Callable[[], float] = time.monotonic) -> StreamClock:
        """The clock of an input read in partitions: ``watermarks()`` maps each partition to its committed watermark.

        ``-inf`` for a partition that has none yet (it holds the stream
        back); no entry for one that read nothing and is idle (left out
        until it reads something). Each worker takes its own
        (:meth:`for_worker`), which also counts what its window step
        processed. This one counts the watermarks only. Without
        ``watermarks`` (an input that publishes none): what each worker's
        window step processed alone.
        """
        clock = cls(lambda: min(watermarks().values(), default=-math.inf), timer)
        clock._watermarks = watermarks
        return clock

    def for_worker(self) -> StreamClock:
        """The clock of the calling thread's worker (Bytewax runs each worker on a thread of its own).

        For :meth:`of_input`, its own clock, with its own :attr:`positions`:
        what one worker processed says nothing of what another still has
        to process. Otherwise this very clock.
        """
        if self._watermarks is None:
            return self
        clock = getattr(self._worker, "clock", None)
        if clock is None:
            positions = ProcessedPositions(self._watermarks)
            clock = self._worker.clock = StreamClock(positions, self._timer)
            clock.positions = positions
        return clock

    def now(self) -> float:
        return self._stream_time()

    def wake_at(self, stream_time: float) -> float:
        """The time on the timer to look again for ``stream_time``.

        A caught-up stream moves about as fast as the wall clock: look again
        after the distance, at most :data:`MAX_NOTIFY_DELAY` (while it has
        stalled, within :data:`STALLED_POLL` when that near). One that reads
        a backlog moves faster, while its speed, measured over the last
        :data:`SPEED_SAMPLE` seconds (and never below half the one before,
        since a second may see no jump at all), is above
        :data:`BACKLOG_SPEED`. Until the cadence of its changes is known,
        look again within :data:`BACKLOG_NOTIFY_DELAY`. Where it moves with
        every batch the worker processes (changes less than
        :data:`CONTINUOUS` apart), look again when its speed says it gets
        there (at least :data:`JUMP_MARGIN` on). Where it moves only with
        the partitions' watermarks, in jumps once an epoch (a worker that
        receives nothing of some partition), look again :data:`JUMP_MARGIN`
        after its next jump is due, and every :data:`LATE_JUMP_POLL` while
        it is late: every state key then looks together, just after the
        jump, and its records close in the epoch that follows the jump
        rather than in a later one.
        """
        now, wall = self.now(), self._timer()
        self._measure(wall, now)
        ahead = stream_time - now
        if math.isnan(ahead):
            ahead = math.inf
        if ahead <= 0:
            return wall
        if self._speed <= BACKLOG_SPEED:
            if ahead <= MAX_NOTIFY_DELAY and wall - self._changed >= STALLED_POLL:
                return wall + min(ahead, STALLED_POLL)
            return wall + min(ahead, MAX_NOTIFY_DELAY)
        cadence = self._cadence
        if cadence is None:  # not known yet
            return wall + min(ahead, BACKLOG_NOTIFY_DELAY)
        if cadence < CONTINUOUS:
            return wall + min(max(ahead / self._speed, JUMP_MARGIN), BACKLOG_NOTIFY_DELAY)
        # The stream stays where it is until its next jump, however close the target.
        due = self._jumped + cadence * max(1, math.floor((wall - self._jumped) / cadence))
        if wall >= due + cadence / 2:
            due += cadence
        if wall < due + JUMP_MARGIN:
            return min(due + JUMP_MARGIN, wall + MAX_NOTIFY_DELAY)
        return min(wall + LATE_JUMP_POLL, due + cadence / 2)  # late: look again soon

    def _measure(self, wall: float, stream: float) -> None:
        if not math.isfinite(stream):
            return
        # The first value seen is no jump: when the stream got there is unknown.
        if stream != self._seen and self._seen != -math.inf:
            self._changed = wall
            if self._jumped is None or wall - self._jumped >= SAME_JUMP:
                if self._jumped is not None:
                    self._gaps.append(wall - self._jumped)
                    self._cadence = sorted(self._gaps)[len(self._gaps) // 2]
                self._jumped = wall
        self._seen = stream
        if self._mark is None:
            self._mark = (wall, stream)
            self._changed = wall  # from here on, a stream that does not move has stalled
            return
        since, then = self._mark
        if wall - since >= SPEED_SAMPLE:
            self._speed = max(1.0, (stream - then) / (wall - since), self._speed / 2)
            self._mark = (wall, stream)


class ProcessedPositions:
    """One worker's stream time: per input partition, the later of its watermark and what the worker processed of it.

    The lowest over the partitions; a partition the watermarks leave out
    (it read nothing and is idle) counts only once this worker processed
    some of its events: until then its events, when they come, are judged
    against the partitions that did read.

    The window step records each event it handles (:meth:`handled`: in
    :attr:`pending`, partition -> newest event time) and calls :meth:`settle` once every
    event it received so far has been handled: Bytewax calls a stateful
    step's ``on_batch`` for every key of what arrived, then its
    ``notify_at``, so ``notify_at`` is that moment. Only then does an event
    count: the events a partition sends one worker arrive in the order it
    read them, so once an event of partition ``p`` at time ``t`` is settled,
    every event ``p`` read before it and sent here has been handled too, and
    what ``p`` still has to send was read after it, when ``p`` had read up
    to ``t`` at least (which is all a watermark says, an epoch later).
    Counting it at once would let another key of the same arrival, handled
    before its own events, close an interval they belong to.

    >>> marks = {0: 100.0, 1: 50.0}
    >>> stream = ProcessedPositions(lambda: marks)
    >>> stream()
    50.0
    >>> stream.pending[1] = 80.0; stream()    # handled, not settled: not yet
    50.0
    >>> stream.settle(); stream()              # partition 0 now holds it at 100
    80.0
    >>> stream.pending[0] = 300.0; stream.pending[1] = 90.0; stream.settle(); stream()
    90.0
    >>> marks = {0: 100.0, 1: 400.0}; stream()  # a new watermark (a new mapping) counts too
    300.0
    >>> marks = {0: -math.inf}                  # 0 has no watermark yet; 1 and 2 read nothing and are idle
    >>> stream = ProcessedPositions(lambda: marks); stream()
    -inf
    >>> stream.pending[1] = 80.0; stream.settle(); stream()  # 0 may still hold a backlog
    -inf
    >>> marks = {0: 90.0}; stream()                          # 1 read since (processed here), 2 is left out
    80.0
    """

    __slots__ = ("_watermarks", "pending", "_processed", "_marks", "_time")

    def __init__(self, watermarks: Callable[[], Mapping[int, float]]):
        self._watermarks = watermarks
        self.pending: Dict[int, float] = {}
        """Partition -> the newest event time the window step handled since the last :meth:`settle`."""
        self._processed: Dict[int, float] = {}
        self._marks: Optional[Mapping[int, float]] = None  # the watermarks the time was computed from
        self._time = -math.inf

    def handled(self, events: Iterable) -> None:
        """The window step handled ``events`` (with ``.partition`` and ``.event_time``): pending until :meth:`settle`."""
        pending = self.pending
        for event in events:
            if event.event_time > pending.get(event.partition, -math.inf):
                pending[event.partition] = event.event_time

    def settle(self) -> None:
        """Everything the worker received so far is handled: what :attr:`pending` holds counts."""
        pending = self.pending
        if not pending:
            return
        processed = self._processed
        for partition, newest in pending.items():
            if newest > processed.get(partition, -math.inf):
                processed[partition] = newest
        pending.clear()
        self._marks = None

    def __call__(self) -> float:
        # The source hands out a new mapping when a watermark changes.
        marks = self._watermarks()
        if marks is not self._marks:
            processed = self._processed
            times = [max(mark, processed.get(partition, -math.inf)) for partition, mark in marks.items()]
            times.extend(newest for partition, newest in processed.items() if partition not in marks)
            self._time = min(times, default=-math.inf)
            self._marks = marks
        return self._time
