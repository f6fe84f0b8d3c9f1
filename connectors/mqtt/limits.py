"""The connector's limits and intervals that more than one module relies on, each defined once."""

from __future__ import annotations

from datetime import timedelta

MAX_PARTITIONS = 1024
"""The most input partitions; an index or count above it on a coordination topic is no partition's."""

MAX_OUTPUT_PARTITIONS = 64
"""The most output partitions; all are listed, whatever the count (see :meth:`.sink.MQTTSink.list_parts`)."""

MAX_SHARDS = 4096
"""The most shards an input topic is read in."""

MAX_RECEIVE_MAXIMUM = 65_535
"""MQTT 5's largest Receive Maximum: the 16-bit packet-id space."""

MAX_OUTPUT_INFLIGHT = 60_000
"""The most records an output partition may have unacknowledged: below the 16-bit packet-id space."""

MAX_PARTITION_MARKER_BYTES = 4096
"""A larger payload on a partition marker topic is no marker."""

MAX_PROGRESS_MARKER_BYTES = 256
"""A progress marker is ``{"run": "<12 hex>", "seq": <int64>}``: a larger payload is none."""

MAX_WATERMARK_BYTES = 256
"""A larger payload on a watermark topic is no watermark."""

IDLE_POLL = timedelta(milliseconds=10)
"""How often an idle input (MQTT messages, or commit ticks) asks to be polled again.

The commit ticks' input must move through epochs as promptly as the MQTT
input does (see :class:`.operators._CommitTicks`), so both use this one.
"""
