"""Every MQTT client id, partition key and coordination topic of the connector.

A flow's ``client_id`` names all of them, so a restarted flow finds its
broker sessions and retained messages again:

>>> input_client_id("driver-stats", 3), output_client_id("driver-stats", 0)
('driver-stats-in-3', 'driver-stats-out-0')
>>> partition_marker_topic("driver-stats", 3)
'connectors-mqtt/partitions/driver-stats/in-3'
>>> watermark_topic("driver-stats", 2), probe_topic("driver-stats", 2)
('connectors-mqtt/watermarks/driver-stats/in-2', 'connectors-mqtt/probes/driver-stats/in-2')
>>> progress_topic(DEFAULT_PROGRESS_PREFIX, "driver-stats", 0)
'connectors-mqtt/progress/driver-stats-out-0'

Coordination topics carry what the partitions say about themselves; the
flow's user must read and write ``connectors-mqtt/#`` and no other client
may write there (docs/scaling-and-brokers.md, "Access control"). A *marker*
is a retained message in which a partition states its own state: a
*partition marker* (the count it reads by, :mod:`.partitions`) or a
*progress marker* (what the broker holds of a sink partition's records,
:mod:`.progress`).
"""

from __future__ import annotations

import re
import uuid

from .limits import MAX_PARTITIONS

ROOT = "connectors-mqtt"
DEFAULT_PROGRESS_PREFIX = f"{ROOT}/progress"

_CLIENT_ID = re.compile(r"[A-Za-z0-9_-]+")
_INDEX_DIGITS = len(str(MAX_PARTITIONS - 1))


def validate_client_id(client_id: str) -> None:
    """Refuse a client id that cannot name MQTT clients and topic levels."""
    if not _CLIENT_ID.fullmatch(client_id):
        raise ValueError(f"client_id {client_id!r}: use 1 or more of A-Z a-z 0-9 _ -")


def input_client_id(client_id: str, index: int) -> str:
    """The MQTT client id (and session) of input partition ``index``."""
    return f"{client_id}-in-{index}"


def output_client_id(client_id: str, index: int) -> str:
    """The MQTT client id of output partition ``index``."""
    return f"{client_id}-out-{index}"


def check_client_id(client_id: str) -> str:
    """The MQTT client id of a connection check (:func:`.link.check_connection`)."""
    return f"{client_id}-check"


def reader_client_id(client_id: str, what: str) -> str:
    """A unique client id for a short reader of ``what`` (``markers``, ``watermarks``): never a session."""
    return f"{client_id}-{what}-{uuid.uuid4().hex[:8]}"


def input_key(index: int) -> str:
    """The Bytewax partition key of input partition ``index``."""
    return f"in-{index}"


def input_index(key: str) -> int:
    """The index in an input partition key (``in-3`` -> 3)."""
    return int(key.removeprefix("in-"))


def index_of(topic: str, prefix: str) -> int | None:
    """The partition index of ``<prefix>/in-<i>``, or None for any other topic or an index out of range.

    >>> index_of("a/b/in-12", "a/b"), index_of("a/b/in-\\u00b2", "a/b"), index_of("a/b/in-99999", "a/b")
    (12, None, None)
    """
    head = f"{prefix}/in-"
    tail = topic[len(head):]
    if not topic.startswith(head) or not (tail.isascii() and tail.isdigit()) or len(tail) > _INDEX_DIGITS:
        return None
    index = int(tail)
    return index if index < MAX_PARTITIONS else None


def partition_markers(client_id: str) -> str:
    """The topic level above the partition markers of ``client_id``'s input partitions."""
    return f"{ROOT}/partitions/{client_id}"


def partition_marker_topic(client_id: str, index: int) -> str:
    """The retained partition marker of input partition ``index``."""
    return f"{partition_markers(client_id)}/in-{index}"


def watermarks(client_id: str) -> str:
    """The topic level above the watermarks of ``client_id``'s input partitions."""
    return f"{ROOT}/watermarks/{client_id}"


def watermark_topic(client_id: str, index: int) -> str:
    """The retained watermark of input partition ``index``."""
    return f"{watermarks(client_id)}/in-{index}"


def probe_topic(client_id: str, index: int) -> str:
    """The topic input partition ``index`` probes its own session on."""
    return f"{ROOT}/probes/{client_id}/in-{index}"


def barrier_topic(level: str, reader_id: str) -> str:
    """Where reader ``reader_id`` of the retained messages under ``level`` publishes its barrier."""
    return f"{level}/barrier/{reader_id}"


def progress_topic(prefix: str, client_id: str, index: int) -> str:
    """The retained progress marker of output partition ``index``."""
    return f"{prefix}/{output_client_id(client_id, index)}"
