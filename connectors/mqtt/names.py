"""Every MQTT client id, partition key and coordination topic of the connector.

A flow's ``client_id`` names all of them, so a restarted flow finds its
broker sessions and retained messages again:

>>> client_id_of("driver-stats", input_key(3)), client_id_of("driver-stats", output_key(0))
('driver-stats-in-3', 'driver-stats-out-0')
>>> [input_topic(kind, "driver-stats", 2) for kind in (PARTITIONS, WATERMARKS, PROBES)]
['connectors-mqtt/partitions/driver-stats/in-2', 'connectors-mqtt/watermarks/driver-stats/in-2', \
'connectors-mqtt/probes/driver-stats/in-2']
>>> progress_topic(DEFAULT_PROGRESS_PREFIX, "driver-stats", 0)
'connectors-mqtt/progress/driver-stats-out-0'

Coordination topics carry what the partitions say about themselves; the
flow's user must read and write ``connectors-mqtt/#`` and no other client
may write there (docs/scaling-and-brokers.md, "Access control"). A *marker*
is a retained message in which a partition states its own state: a
*partition marker* (the count an input partition reads by,
:mod:`.partitions`) or a *progress marker* (what the broker holds of an
output partition's records, :mod:`.progress`).
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


def client_id_of(client_id: str, part: str) -> str:
    """The MQTT client id of ``part`` (a partition key, or ``check``) of the flow ``client_id``."""
    return f"{client_id}-{part}"


def reader_client_id(client_id: str, what: str) -> str:
    """A unique client id for a short reader of ``what`` (``markers``, ``watermarks``): never a session."""
    return client_id_of(client_id, f"{what}-{uuid.uuid4().hex[:8]}")


def input_key(index: int) -> str:
    """The Bytewax partition key of input partition ``index``; ``output_key`` names output partitions."""
    return f"in-{index}"


output_key = "out-{}".format


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


PARTITIONS, WATERMARKS, PROBES = "partitions", "watermarks", "probes"
"""The kinds of input partitions' coordination topics: partition markers, watermarks, idle probes."""


def input_level(kind: str, client_id: str) -> str:
    """The topic level above the ``kind`` topics of ``client_id``'s input partitions."""
    return f"{ROOT}/{kind}/{client_id}"


def input_topic(kind: str, client_id: str, index: int) -> str:
    """The ``kind`` topic of input partition ``index`` (retained for partition markers and watermarks)."""
    return f"{input_level(kind, client_id)}/{input_key(index)}"


def barrier_topic(level: str, reader_id: str) -> str:
    """Where reader ``reader_id`` of the retained messages under ``level`` publishes its barrier."""
    return f"{level}/barrier/{reader_id}"


def progress_topic(prefix: str, client_id: str, index: int) -> str:
    """The retained progress marker of output partition ``index``."""
    return f"{prefix}/{client_id_of(client_id, output_key(index))}"
