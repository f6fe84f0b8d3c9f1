"""QoS 1 subscriptions as a partitioned Bytewax source, acknowledged after commit.

Each partition ``in-<i>`` of ``N`` is one client (``<client_id>-in-<i>``)
with its own persistent session and plain QoS 1 subscriptions to the topics
it owns: the shards ``<topic>/<s>`` with ``s % N == i``, and the plain
topics on partition 0, so the broker delivers each message once
(:mod:`.partitions`; a change of ``N`` loses nothing). A message is
PUBACKed only once the epoch it was emitted in is committed
(:mod:`.intake`). With a ``newest_position`` function each partition also
publishes its watermark (:mod:`.watermarks`). See
docs/scaling-and-brokers.md and docs/delivery.md.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field

from bytewax.inputs import FixedPartitionedSource

from .connection import PROTOCOLS, MQTTConnection, Protocol
from .limits import MAX_PARTITIONS, MAX_RECEIVE_MAXIMUM, MAX_SHARDS
from .link import EventHook, MQTTLinkStats
from .message import MQTTError, MQTTMessage
from .names import client_id_of, input_index, input_key, validate_client_id
from .ownership import read_markers
from .process import DiedHook, SourcePartitionProcess, hand_off
from .source_partition import _MQTTSourcePartition
from .watermarks import WatermarkBoard

_SESSION_EXPIRY_S = 7 * 24 * 3600


@dataclass(eq=False)
class MQTTSource(FixedPartitionedSource[MQTTMessage | MQTTError, None]):
    """QoS 1 subscriptions as a partitioned Bytewax source.

    Emits :class:`MQTTMessage`, or :class:`MQTTError` for a message larger
    than ``max_message_bytes`` (or with a topic that is not UTF-8). Partition
    keys are ``"in-<i>"``; partition ``i`` reads the shards it owns
    (``<topic>/<s>`` with ``s % partitions == i``) and partition 0 the plain
    topics too; :meth:`list_parts` adds ``"in-<j>"`` for each session a
    larger count left behind (drained, then deleted). The resume state is
    ``None``: the broker session is the resume state.

    Args:
        connection: The broker.
        topics: Plain topic names (no wildcards, not ``$...``).
        client_id: Stable identity: partition ``i`` is client
            ``<client_id>-in-<i>``; its marker is the retained topic
            ``connectors-mqtt/partitions/<client_id>/in-<i>``.
        partitions: How many partitions read the topics (any count keeps
            every message).
        shards: Also read ``<topic>/<s>`` for ``s < shards``, spread over
            the partitions (0: the plain topics only, all on partition 0).
            Producers pick the shard; a fixed key per shard keeps that key's
            messages in publish order on one partition.
        max_unacked: Most messages a partition holds unacknowledged (received,
            and not yet covered by a committed snapshot). With MQTT 5 it is
            the Receive Maximum the broker must respect, at most 65535 (the
            packet-id space); with 3.1.1 the partition stops reading at it.
            It is therefore the most messages one partition reads per epoch.
        batch_size: Most messages per ``next_batch``.
        max_message_bytes: Larger payloads come out as :class:`MQTTError`.
        protocol: ``"5"`` or ``"3.1.1"``; default: 5, or 3.1.1 where the
            broker lacks 5 (then the partition stops reading at
            ``max_unacked``, and a broker's own in-flight limit throttles).
        session_expiry: MQTT 5 session expiry interval, seconds.
        on_event: ``on_event(event, client_id, detail)`` on each change of
            connection state.
        newest_position: ``newest_position(messages)``: the newest time in
            Unix seconds a batch of messages stands for in the stream (e.g.
            their newest event time), or None. Turns on watermarks
            (:mod:`.watermarks`, :meth:`watermarks`).
        position_max_ahead: Positions are never more than this many seconds
            ahead of the wall clock: a watermark beyond is ignored (forged).
        wall_clock: The wall clock (Unix seconds) for that check, the only
            use of the calendar here; elapsed times are ``time.monotonic()``.
        probe_interval: Seconds between a partition's idle probes; None:
            none, so no partition ever counts as idle (for a broker that
            does not keep a session's order across topics, :mod:`.order`).
        own_process: Run each partition's MQTT client, and the work per
            message, in a child process of its own (:mod:`.process`): the
            worker's interpreter only unpickles batches (:mod:`.process`).
        on_died: With ``own_process``: ``on_died(line)`` when a partition's
            child process ends without being closed (:data:`.process.DiedHook`).
        epoch_interval: The dataflow's epoch interval in seconds: the
            partitions wake so that every input moves epochs at the same
            moments, and sleep while the epoch gate holds them
            (:mod:`.epochs`; None: they poll every 10 ms).
    """

    connection: MQTTConnection
    topics: Sequence[str]
    _: KW_ONLY
    client_id: str
    partitions: int = 1
    shards: int = 0
    max_unacked: int = 50_000
    batch_size: int = 1000
    max_message_bytes: int | None = None
    protocol: Protocol | None = None
    session_expiry: int = _SESSION_EXPIRY_S
    on_event: EventHook | None = None
    newest_position: Callable[[list[MQTTMessage]], float | None] | None = None
    position_max_ahead: float = math.inf
    wall_clock: Callable[[], float] = time.time
    probe_interval: float | None = 1.0
    own_process: bool = False
    on_died: DiedHook | None = None
    epoch_interval: float | None = None
    stats: dict[str, MQTTLinkStats] = field(default_factory=dict, init=False)
    """Counters per client id, filled as partitions start on this process."""
    shard_of_topic: dict[bytes, int | None] = field(default_factory=dict, init=False, repr=False)
    """Topic (bytes, as paho has it) -> its shard; None for a plain topic."""

    def __post_init__(self) -> None:
        self.topics = list(self.topics)
        self._check()
        for shard in (None, *range(self.shards)):
            for topic in self.topics_of([shard]):
                self.shard_of_topic[topic.encode()] = shard
        self._board: WatermarkBoard | None = None
        self._parts: tuple[int, ...] = ()  # partitions whose watermark counts (listed, not retired)

    def _check(self) -> None:
        validate_client_id(self.client_id)
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol {self.protocol!r}: use '3.1.1' or '5'")
        if not 1 <= self.partitions <= MAX_PARTITIONS:
            raise ValueError(f"partitions must be 1..{MAX_PARTITIONS}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not 0 <= self.shards <= MAX_SHARDS:
            raise ValueError(f"shards must be 0..{MAX_SHARDS}")
        if not 1 <= self.max_unacked <= MAX_RECEIVE_MAXIMUM:
            raise ValueError(f"max_unacked must be 1..{MAX_RECEIVE_MAXIMUM}")
        if not self.topics:
            raise ValueError("no topics")
        for topic in self.topics:
            if not topic or "#" in topic or "+" in topic or topic.startswith("$"):
                raise ValueError(f"topic {topic!r}: give a plain topic name (no wildcards, not $...)")

    def topics_of(self, shards: Iterable[int | None]) -> list[str]:
        """The topic names of ``shards`` (None: the plain topics)."""
        return [topic if shard is None else f"{topic}/{shard}" for shard in shards for topic in self.topics]

    def client_id_for(self, index: int) -> str:
        """Stable client id of partition ``index``."""
        return client_id_of(self.client_id, input_key(index))

    def list_parts(self) -> list[str]:
        """``in-0`` … ``in-<partitions-1>``, and ``in-<j>`` for each session a larger count left (to drain)."""
        left = read_markers(self.connection, self.client_id, label=f"{self.client_id}-in")
        drains = [j for j in sorted(left) if j >= self.partitions]
        self._parts = (*range(self.partitions), *(j for j in drains if not left[j].retired))
        return [input_key(i) for i in (*range(self.partitions), *drains)]

    def board(self) -> WatermarkBoard:
        """The watermarks of all partitions (started on first use)."""
        if self._board is None:
            self._board = WatermarkBoard(self.connection, self.client_id, self.position_max_ahead, self.wall_clock)
        return self._board.start()

    def watermarks(self) -> Mapping[int, float]:
        """Each listed partition's watermark (``-inf`` until it has one); needs ``newest_position``.

        A partition that has read nothing and is idle is left out of the
        mapping (:mod:`.watermarks`). The lowest of them is the dataflow's
        low watermark: every message a partition has yet to emit comes after
        what it had read when it published its watermark, and everything
        before that has been processed by the whole dataflow. The same mapping until a watermark
        changes. Messages carry the index of the partition that read them
        (:attr:`MQTTMessage.partition`), so a step can also tell how far it
        has processed each partition itself.
        """
        board = self._board
        if board is None or not self._parts:
            if self.newest_position is None:
                raise ValueError("watermarks need a newest_position function")
            if not self._parts:
                self.list_parts()
            board = self.board()
        return board.of(self._parts)

    def close(self) -> None:
        """Stop the watermark reader, if one runs (the partitions close with the dataflow)."""
        if self._board is not None:
            self._board.stop()
            self._board = None

    def build_part(
        self, step_id: str, for_part: str, resume_state: None
    ) -> _MQTTSourcePartition | SourcePartitionProcess:
        index = input_index(for_part)
        # Read here, not in a child: the board's lock is its client thread's.
        start = None if self.newest_position is None else self.board().value(index)
        if not self.own_process:
            return _MQTTSourcePartition(self, index, start)
        build, hooks = hand_off(self, {"on_event": None}, lambda local: _MQTTSourcePartition(local, index, start))
        stats = MQTTLinkStats()
        if index < self.partitions:
            stats = self.stats.setdefault(self.client_id_for(index), stats)
        return SourcePartitionProcess(build, stats, hooks, label=f"mqtt-in-{index}", index=index,
                                      on_died=self.on_died, epoch_interval=self.epoch_interval)
