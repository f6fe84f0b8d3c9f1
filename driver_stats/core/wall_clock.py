"""The wall clock, for the calendar only, read through :func:`now`.

Which clock does what (the README's "Event time" says the same):

* the **wall clock** (:func:`now`) answers calendar questions only: is an
  event's time too far ahead of today (the ``future`` rule), is a
  watermark from the broker forged (ahead of today), how old is a record
  or a recovery store, what time to show people;
* **elapsed time** (the idle input's advance, probe round trips, backoffs,
  wake-ups, readiness and liveness ages) is measured on
  ``time.monotonic()``, so a step of the host's clock (an NTP correction, a
  VM resumed from a pause) moves no stream time and closes no interval;
* the **stream time** comes from the events (:mod:`.stream_clock`).

The one seam: :func:`shift_by_file` makes :func:`now` add the number of
seconds written in a file (re-read every :data:`SHIFT_REREAD` s), so a test
can step the wall clock of a running flow, its child processes included
(they are forked after the flow starts: ``DRIVER_STATS_WALL_CLOCK_SHIFT_FILE``).

>>> import time
>>> abs(now() - time.time()) < 1
True
"""

from __future__ import annotations

import logging
import time
from typing import Optional

log = logging.getLogger("driver_stats.wall_clock")

SHIFT_REREAD = 0.1
"""Seconds between two reads of the shift file (:func:`now` is called per batch)."""

_shift_file: Optional[str] = None
_shift = 0.0
_read_at = -float("inf")  # time.monotonic() of the last read


def now() -> float:
    """Unix seconds on the wall clock (plus the shift a test asked for)."""
    if _shift_file is None:
        return time.time()
    return time.time() + _current_shift()


def shift_by_file(path: Optional[str]) -> None:
    """From now on, add the seconds written in ``path`` to :func:`now` (a missing or empty file: 0); None: stop."""
    global _shift_file, _shift, _read_at
    _shift_file, _shift, _read_at = path or None, 0.0, -float("inf")


def _current_shift() -> float:
    global _shift, _read_at
    ticks = time.monotonic()
    if ticks - _read_at >= SHIFT_REREAD:
        _read_at = ticks
        try:
            with open(_shift_file) as file:
                text = file.read().strip()
            shift = float(text) if text else 0.0
        except (OSError, ValueError):
            shift = 0.0
        if shift != _shift:
            log.warning("wall clock shifted by %+gs (%s)", shift, _shift_file)
            _shift = shift
    return _shift
