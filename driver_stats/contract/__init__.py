"""The external contract in one place: message structs, protobuf code, codecs,
the input topics (:mod:`.topics`) and the rejection reasons (:mod:`.reasons`).

``events.proto``/``stats.proto`` under ``proto/`` are written from the field
tables of ``../shared/CONTRACT.md``; ``events_pb2.py``/``stats_pb2.py`` are
generated from them (``tests/contract/test_contract.py`` fails when they drift) and
committed, so installing the project needs no protoc.
"""

from .codec import (
    DecodeError,
    EventDecoder,
    decode_stats,
    encode_event,
    encode_stats,
    float32,
    stats_interval_end,
    to_json,
)
from .events import (
    EVENT_TYPES,
    DriverRated,
    DriverStats,
    DriverTipped,
    Event,
    FinishReason,
    JourneyFinished,
    Rejection,
)
from .reasons import Reason
from .topics import INPUT_OF, INPUT_SHARDS, INPUTS, REJECTED_PREFIX, STATS_TOPIC, Input, input_shard, sharded_topic

__all__ = [
    "EVENT_TYPES",
    "INPUTS",
    "INPUT_OF",
    "INPUT_SHARDS",
    "REJECTED_PREFIX",
    "STATS_TOPIC",
    "DecodeError",
    "DriverRated",
    "DriverStats",
    "DriverTipped",
    "Event",
    "EventDecoder",
    "FinishReason",
    "Input",
    "JourneyFinished",
    "Reason",
    "Rejection",
    "decode_stats",
    "stats_interval_end",
    "encode_event",
    "encode_stats",
    "float32",
    "input_shard",
    "sharded_topic",
    "to_json",
]
