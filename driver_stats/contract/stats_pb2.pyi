import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DriverStats(_message.Message):
    __slots__ = ("driver_id", "interval_start", "interval_end", "total_drop_offs", "total_driver_cancels", "total_distance", "total_price", "total_tips", "avg_rating")
    DRIVER_ID_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_START_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_END_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DROP_OFFS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DRIVER_CANCELS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PRICE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TIPS_FIELD_NUMBER: _ClassVar[int]
    AVG_RATING_FIELD_NUMBER: _ClassVar[int]
    driver_id: str
    interval_start: _timestamp_pb2.Timestamp
    interval_end: _timestamp_pb2.Timestamp
    total_drop_offs: int
    total_driver_cancels: int
    total_distance: int
    total_price: int
    total_tips: int
    avg_rating: float
    def __init__(self, driver_id: _Optional[str] = ..., interval_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., interval_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., total_drop_offs: _Optional[int] = ..., total_driver_cancels: _Optional[int] = ..., total_distance: _Optional[int] = ..., total_price: _Optional[int] = ..., total_tips: _Optional[int] = ..., avg_rating: _Optional[float] = ...) -> None: ...
