"""Publishing with QoS 1 as a partitioned Bytewax sink, gated by the recovery commit.

A record is published only once the snapshot of the epoch that produced it
is committed, and the snapshot holds what is needed to publish it after a
crash; the worker never waits for PUBACKs on its way. Bytewax calls
``next_batch`` of an input in epoch E only once epoch E-1 is committed, so
:func:`connectors.mqtt.operators.publish` merges into the sink's input a
small input of its own that emits a :data:`COMMIT_TICK` for every partition
about every 100 ms: its arrival proves the sealed records committed
(:mod:`.sink_partition`). After a crash the resumed partition publishes
again what its snapshot held, except what its progress marker says the
broker has (:mod:`.progress`); a refused record waits and is retried
(:mod:`.refusals`). See docs/delivery.md, "Output: each record once".
"""

from __future__ import annotations

import pickle
import zlib
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field

from bytewax.outputs import FixedPartitionedSink

from .connection import MQTTConnection
from .limits import MAX_OUTPUT_INFLIGHT, MAX_OUTPUT_PARTITIONS
from .link import EventHook, MQTTLinkStats
from .message import MQTTMessage
from .names import DEFAULT_PROGRESS_PREFIX, client_id_of, output_key, validate_client_id
from .process import WRITTEN, DiedHook, SinkPartitionProcess, hand_off
from .sink_partition import COMMIT_TICK, SinkState, _CommitTick, _MQTTSinkPartition

__all__ = ["COMMIT_TICK", "MQTTSink", "SinkState"]


@dataclass(eq=False)
class MQTTSink(FixedPartitionedSink[MQTTMessage | _CommitTick, SinkState]):
    """Publish ``(key, MQTTMessage)`` items with QoS 1 once their epoch is committed.

    Use it through :func:`connectors.mqtt.operators.publish`, which adds the
    commit ticks; items arriving without ticks are published only when the
    dataflow ends (or at once, not ``commit_gated``). The key picks the
    partition (``zlib.adler32``), so items with the same key keep their
    order. The payload is sent as given, user properties in the given order:
    the same item gives the same bytes. A publish the broker refuses waits
    and is retried, holding back those behind it (see :mod:`.sink`).

    Args:
        connection: The broker.
        client_id: Partition ``i`` is client ``<client_id>-out-<i>``.
        partitions: Number of partitions (clients) that get items, 1 to
            :data:`.limits.MAX_OUTPUT_PARTITIONS`; several workers and processes publish in
            parallel. It may change between runs: a recovery store written
            with more still resumes, and their committed records go out.
        timeout: Seconds the worker may wait for the broker (to connect, or
            with ``max_inflight`` records unacknowledged or held back by a
            refusal); ``None`` (default): as long as it takes. Waiting is
            what the guarantee needs: the dataflow stops at the sink (its
            input too, by backpressure) and nothing is lost or repeated.
        max_inflight: Records a partition may have published and not yet
            acknowledged (or holds back behind a refused one) before the
            worker waits (below the 16-bit packet-id space).
        commit_gated: Publish a record only once its epoch is committed
            (default). ``False`` publishes each record as it arrives, for a
            dataflow without recovery, where no commit ever comes before
            the epoch ends: no waiting, no progress markers (nothing would
            resume from them).
        session_expiry: MQTT 5 session expiry interval, seconds.
        progress_prefix: Topic prefix of the retained progress markers.
        envelopes: ``(prefix, envelope prefix)``: with MQTT 3.1.1, which
            has no user properties, a record on ``<prefix><rest>`` that
            carries some is followed by an envelope on
            ``<envelope prefix><rest>`` carrying them (:func:`.outbox.envelope`).
        on_event: ``on_event(event, client_id, detail)`` on each change of
            connection state.
        on_written: ``on_written(messages, seconds)`` with the messages the
            broker accepted since the last call, and the longest of
            their waits for the PUBACK; called from the worker.
        on_refused: ``on_refused(topic, reason)`` for each publish the
            broker refused (a record, or a progress marker), reason as
            ``Not authorized (0x87)``; called from the worker.
        own_process: Run each partition that gets records (its MQTT client,
            publishing, PUBACKs, markers) in a child process of its own
            (:mod:`.process`): the worker's interpreter only pickles them.
        on_died: With ``own_process``: ``on_died(line)`` when a partition's
            child process ends without being closed (:data:`.process.DiedHook`).
        epoch_interval: The dataflow's epoch interval in seconds, for the
            commit ticks' wake-ups (:mod:`.epochs`; None: every 10 ms).
    """

    connection: MQTTConnection
    _: KW_ONLY
    client_id: str
    partitions: int = 1
    timeout: float | None = None
    max_inflight: int = 20_000
    session_expiry: int = 300
    progress_prefix: str = DEFAULT_PROGRESS_PREFIX
    envelopes: tuple[str, str] | None = None
    on_event: EventHook | None = None
    on_written: Callable[[list[MQTTMessage], float], None] | None = None
    on_refused: Callable[[str, str], None] | None = None
    commit_gated: bool = True
    own_process: bool = False
    on_died: DiedHook | None = None
    epoch_interval: float | None = None
    stats: dict[str, MQTTLinkStats] = field(default_factory=dict, init=False)
    """Counters per client id, filled as partitions start on this process."""

    def __post_init__(self) -> None:
        validate_client_id(self.client_id)
        if not 1 <= self.partitions <= MAX_OUTPUT_PARTITIONS:
            raise ValueError(f"partitions must be 1..{MAX_OUTPUT_PARTITIONS}")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError("timeout must be > 0")
        if not 1 <= self.max_inflight <= MAX_OUTPUT_INFLIGHT:
            raise ValueError(f"max_inflight must be 1..{MAX_OUTPUT_INFLIGHT} (below the 16-bit packet-id space)")
        prefix = self.progress_prefix
        if not prefix or "#" in prefix or "+" in prefix:
            raise ValueError(f"progress_prefix {prefix!r}: give a plain topic prefix")
        self.progress_prefix = prefix.rstrip("/")
        self._position = {name: i for i, name in enumerate(sorted(self.list_parts()))}

    def list_parts(self) -> list[str]:
        # All MAX_OUTPUT_PARTITIONS, whatever ``partitions`` is: Bytewax refuses to
        # resume a recovery store holding a partition the sink no longer
        # lists, and a partition dropped by a smaller count may still hold
        # committed records. Only the first ``partitions`` get items; a
        # partition beyond them is built only to resume such a state: it
        # publishes what the broker lacks and stays idle.
        return [str(i) for i in range(MAX_OUTPUT_PARTITIONS)]

    def tick_keys(self) -> list[str]:
        """One key routed to each of the ``partitions`` partitions, for :data:`COMMIT_TICK` items."""
        keys: dict[int, str] = {}
        n = 0
        while len(keys) < self.partitions:
            key = f"commit-tick-{n}"
            keys.setdefault(zlib.adler32(key.encode()) % self.partitions, key)
            n += 1
        return list(keys.values())

    def part_fn(self, item_key: str) -> int:
        # Bytewax indexes the sorted partition names ("0", "1", "10", ...)
        # with this: give the position of partition adler32(key) % partitions.
        return self._position[str(zlib.adler32(item_key.encode()) % self.partitions)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: None | SinkState | bytes
    ) -> _MQTTSinkPartition | SinkPartitionProcess:
        index = int(for_part)
        if isinstance(resume_state, bytes):  # written by a partition in a process of its own
            resume_state = pickle.loads(resume_state)
        if not self.own_process:
            return _MQTTSinkPartition(self, index, resume_state)
        build, hooks = hand_off(self, {"on_event": None, "on_written": WRITTEN, "on_refused": None},
                                lambda local: _MQTTSinkPartition(local, index, resume_state))
        stats = self.stats.setdefault(client_id_of(self.client_id, output_key(index)), MQTTLinkStats())
        return SinkPartitionProcess(build, COMMIT_TICK, stats, hooks, label=f"mqtt-out-{index}",
                                    on_died=self.on_died)
