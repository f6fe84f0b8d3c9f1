"""Dedupe keys: the (message type, journey_id) of every event counted in an interval.

Plain Python, no dataflow code: :mod:`driver_stats.core.windows` keeps one
:class:`SeenKeys` per open interval, and keeps it after the interval closes
for the state retention, so a repeat is recognised for that long.
"""

from __future__ import annotations

import struct

from ..contract import DriverRated, DriverTipped, Event, JourneyFinished

# Keys hold a small number per message type instead of the class.
_KIND = {DriverRated: 0, DriverTipped: 1, JourneyFinished: 2}


def dedupe_key(event: Event) -> tuple[int, str]:
    """An event's identity per the contract: (message type, journey_id)."""
    return _KIND[type(event)], event.journey_id


class SeenKeys(set):
    """The (message type, journey_id) keys counted in one interval.

    A set answers "seen?" (this is one, so the check is a C call: an event
    is checked against every interval its driver holds); an append-only
    byte log of the same keys makes a snapshot one copy of bytes instead of
    a copy of a set of tuples, so an interval with a million journeys costs
    a snapshot milliseconds, not seconds (snapshots happen every epoch for
    every driver that changed).
    """

    __slots__ = ("_log",)
    _HEADER = struct.Struct("<BI")  # message type, journey_id length in bytes

    def __init__(self) -> None:
        super().__init__()
        self._log = bytearray()

    def add(self, key: tuple[int, str]) -> None:
        set.add(self, key)
        journey = key[1].encode("utf-8", "surrogatepass")
        self._log += self._HEADER.pack(key[0], len(journey))
        self._log += journey

    def snapshot(self) -> bytes:
        return bytes(self._log)

    @classmethod
    def restore(cls, log: bytes | frozenset) -> SeenKeys:
        seen = cls()
        if isinstance(log, frozenset):  # written before the log existed
            for key in log:
                seen.add(key)
            return seen
        seen._log = bytearray(log)
        header, offset = cls._HEADER, 0
        while offset < len(log):
            kind, length = header.unpack_from(log, offset)
            offset += header.size
            set.add(seen, (kind, log[offset : offset + length].decode("utf-8", "surrogatepass")))
            offset += length
        return seen
