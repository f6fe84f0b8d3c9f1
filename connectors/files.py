"""Line-per-message files as a Bytewax source, and a sink that collects messages.

:class:`FileSource` has one partition per file; each line (without its line
end; blank lines are skipped) becomes a :class:`FileMessage` (``topic`` and
``payload``, as an MQTT message has them) on the topic given for that file,
so a dataflow written for MQTT input runs unchanged over history files. A
partition's snapshot is the byte offset of its next line: a resumed run
continues after the last line of the committed epoch.

:class:`CollectSink` appends every item it receives (a ``(key, message)``
pair as its message) to a list in this process, for tools that run a
dataflow in-process and write the result themselves.

``on_read(n)`` on the source is called with the number of lines each batch
read (from the worker threads): :class:`Progress` uses it to print a counter.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition

__all__ = ["CollectSink", "FileMessage", "FileSource", "Progress"]


@dataclass(frozen=True)
class FileMessage:
    """One line of a file, on the topic of its file.

    Args:
        topic: The topic given for the file.
        payload: The line, without its line end.
    """

    topic: str
    payload: bytes


class _FilePartition(StatefulSourcePartition[FileMessage, int]):
    def __init__(
        self,
        path: Path,
        topic: str,
        offset: int,
        batch_size: int,
        on_read: Callable[[int], None] | None,
    ) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._file.seek(offset)
        self._offset = offset
        self._topic = topic
        self._batch_size = batch_size
        self._on_read = on_read

    def next_batch(self) -> list[FileMessage]:
        batch: list[FileMessage] = []
        readline = self._file.readline
        topic = self._topic
        lines = 0
        while lines < self._batch_size:
            line = readline()
            if not line:
                break
            lines += 1
            self._offset += len(line)
            line = line.rstrip(b"\r\n")
            if line.strip():
                batch.append(FileMessage(topic, line))
        if lines == 0:
            raise StopIteration()
        if self._on_read is not None and batch:
            self._on_read(len(batch))
        return batch

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        self._file.close()


class FileSource(FixedPartitionedSource[FileMessage, int]):
    """One partition per file; a line is a :class:`FileMessage`.

    The partition key is the file's path as given; resume state is a byte
    offset (the start of the next unread line).

    Args:
        files: ``[(path, topic), ...]``: each file and the topic of its lines.
        batch_size: Most lines per batch.
        on_read: ``on_read(n)`` after each batch of ``n`` lines.
    """

    def __init__(
        self,
        files: Iterable[tuple[str | Path, str]],
        *,
        batch_size: int = 1000,
        on_read: Callable[[int], None] | None = None,
    ) -> None:
        self.files = {str(path): topic for path, topic in files}
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.batch_size = batch_size
        self.on_read = on_read

    def list_parts(self) -> list[str]:
        return list(self.files)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _FilePartition:
        return _FilePartition(
            Path(for_part), self.files[for_part], resume_state or 0, self.batch_size, self.on_read
        )


class _CollectPartition(StatelessSinkPartition):
    def __init__(self, out: list, lock: threading.Lock, unkey: bool) -> None:
        self._out = out
        self._lock = lock
        self._unkey = unkey

    def write_batch(self, items: list) -> None:
        if self._unkey:
            items = [item[1] if isinstance(item, tuple) and len(item) == 2 else item for item in items]
        with self._lock:
            self._out.extend(items)


class CollectSink(DynamicSink):
    """Appends every item to ``out`` (a list shared by all workers of this process).

    Args:
        out: The list.
        unkey: Store a ``(key, value)`` pair as its value (the default), so
            the sink takes the same keyed stream as a partitioned sink (a
            flow keys its messages by topic for :class:`~connectors.mqtt.MQTTSink`).
    """

    def __init__(self, out: list, *, unkey: bool = True) -> None:
        self.out = out
        self.unkey = unkey
        self._lock = threading.Lock()

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CollectPartition:
        return _CollectPartition(self.out, self._lock, self.unkey)


class Progress:
    """Counts lines read and prints ``<label>: N events read, R events/s`` every ``every`` s."""

    def __init__(self, label: str = "read", every: float = 2.0, stream: TextIO | None = None) -> None:
        self.label = label
        self.every = every
        self.stream = stream if stream is not None else sys.stderr
        self.count = 0
        self.started = time.monotonic()
        self._last_print = self.started
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        with self._lock:
            self.count += n
            now = time.monotonic()
            if now - self._last_print < self.every:
                return
            self._last_print = now
            line = self.line(now)
        print(line, file=self.stream, flush=True)

    def line(self, now: float | None = None) -> str:
        elapsed = max(1e-9, (now or time.monotonic()) - self.started)
        return f"{self.label}: {self.count} events read, {self.count / elapsed:,.0f} events/s"
