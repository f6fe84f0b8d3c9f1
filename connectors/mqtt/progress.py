"""An output partition's progress marker: what the broker holds of its records, read, trusted and kept.

After each group of records an output partition publishes a retained
*progress marker* ``{"run": "<12 hex>", "seq": <n>}`` on
:func:`.names.progress_topic`, on the same connection, so the broker
holding the marker implies it received the records up to ``#n`` of that
run. A partition resumed from a snapshot reads its marker first and skips
those records (see docs/delivery.md, "Output: each record once").

A marker is trusted only as far as the snapshot accounts for it
(:func:`read_progress`): anything else on the topic makes records repeat,
never skip or crash. A marker never claims a record the broker refused:
the lowest such record is the :attr:`ProgressMarker.floor`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from .connection import MQTTPublishError
from .limits import MAX_PROGRESS_MARKER_BYTES
from .link import Link
from .refusals import REFUSAL_LOG_EVERY
from .retained import load_json, read_retained

log = logging.getLogger("connectors.mqtt")


@dataclass(frozen=True)
class Progress:
    """What a retained progress marker tells a resuming partition.

    ``done``: the last sequence number the broker holds by the marker (-1:
    none); ``ignored``: why a marker was not trusted (empty when it was, or
    when there was none).
    """

    done: int = -1
    ignored: str = ""


def read_progress(payload: bytes | None, run: str, next_seq: int) -> Progress:
    """Read a progress marker, trusting it only as far as the partition's state accounts for it.

    Trusted: at most :data:`.limits.MAX_PROGRESS_MARKER_BYTES` of UTF-8
    JSON, an object with exactly ``run`` (this partition's run) and ``seq``,
    an integer from -1 to ``next_seq - 1``: the partition never numbered a
    record beyond that, so a larger one is not its own. Anything else is
    ignored (``done == -1``: every pending record is published again),
    whatever it holds, and never raises.
    """
    if not payload:
        return Progress()
    try:
        marker = load_json(payload, MAX_PROGRESS_MARKER_BYTES)
    except ValueError as err:
        return Progress(ignored=str(err))
    if not isinstance(marker, dict) or set(marker) != {"run", "seq"}:
        return Progress(ignored='not a {"run", "seq"} object')
    theirs, seq = marker["run"], marker["seq"]
    if not isinstance(theirs, str):
        return Progress(ignored="its run is not a string")
    if theirs != run:
        return Progress(ignored=f"another run ({theirs[:40]!r}; this partition's is {run!r})")
    if type(seq) is not int:  # bool is an int too; 1e400 is a float (inf)
        return Progress(ignored=f"its seq {seq!r} is not an integer")
    if not -1 <= seq < next_seq:
        return Progress(ignored=f"its seq {seq} is beyond this partition's records (it numbered #0 to #{next_seq - 1})")
    return Progress(done=seq)


class ProgressMarker:
    """One output partition's progress marker: its topic, its claims, and the broker's refusals of it.

    :attr:`floor` is written by paho's network thread as a refusal arrives
    and read as a marker is published: both under the lock of the
    partition's :class:`~.outbox.Outbox`. The rest is the worker's.
    """

    def __init__(self, topic: str, run: str, label: str) -> None:
        self.topic = topic
        self._run = run
        self._label = label
        self.floor: int | None = None
        """The lowest sequence number refused and not yet accepted: no marker may claim it."""
        self.refused = ""
        """Why the broker refuses the marker, while it does."""
        self.refused_since = 0.0
        self._next_log = 0.0

    def claim(self, seq: int) -> bytes:
        """The marker saying the broker holds the records up to ``seq``, never past the :attr:`floor`."""
        if self.floor is not None:
            seq = min(seq, self.floor - 1)
        return json.dumps({"run": self._run, "seq": seq}).encode()

    def read(self, link: Link, next_seq: int, pending: int, now: float) -> int:
        """The last sequence number the broker holds from this run, by the retained marker (-1: none or untrusted).

        Uses ``link``'s client (its ``on_message``, ``on_subscribe`` and
        ``on_publish``: the caller sets its own again).
        """
        got: list[bytes] = []

        def on_message(msg) -> None:
            if msg.retain:
                got.append(msg.payload)

        try:
            refused = read_retained(link.client, link.connection, self.topic, self.topic, on_message)
        except TimeoutError as err:
            raise MQTTPublishError(f"{link.label}: its progress marker {self.topic!r} was {err}") from None
        link.client.unsubscribe(self.topic)
        if refused:
            self.refused, self.refused_since = f"the broker refuses the progress marker on {self.topic!r}: {refused}", now
            log.error("%s: cannot read its progress marker (%s); publishing all %d pending records again "
                      "(some may repeat): the flow's user must read and write %r",
                      self._label, refused, pending, self.topic)
            return -1
        payload = got[-1] if got else None
        progress = read_progress(payload, self._run, next_seq)
        if progress.ignored:
            shown = payload[:64] + (b"..." if len(payload) > 64 else b"")
            log.warning("%s: ignoring the progress marker on %r (%s): %r; publishing all %d pending records "
                        "again (some may repeat)", self._label, self.topic, progress.ignored, shown, pending)
        else:
            log.info("%s resumes: the broker holds its records up to #%d", self._label, progress.done)
        return progress.done

    def answered(self, refused: str, now: float) -> None:
        """The broker acknowledged a marker: accepted (``refused`` empty), or refused for that reason."""
        if not refused:
            if self.refused:
                self.refused = ""
                log.info("%s: the broker accepts its progress marker again", self._label)
            return
        if not self.refused or now >= self._next_log:
            self._next_log = now + REFUSAL_LOG_EVERY
            log.error("%s: the broker refused its progress marker on %r: %s; records still go out, but after a "
                      "crash the resumed flow publishes them again: the flow's user must write that topic",
                      self._label, self.topic, refused)
        if not self.refused:
            self.refused_since = now
        self.refused = f"the broker refuses the progress marker on {self.topic!r}: {refused}"
