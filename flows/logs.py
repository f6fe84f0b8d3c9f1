"""Structured log lines: one JSON object per line on stderr.

Every line has ``time``, ``level``, ``logger`` and ``message``; fields passed
with ``extra={...}`` become top-level keys. The MQTT connector's connection
lines carry ``partition`` (``in-0``, ``out-0``), ``client_id``, ``broker`` and
``state``, so an on-call engineer can filter with
``jq 'select(.partition == "in-0")'``, ``select(.state == "disconnected")`` or
by ``logger``.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone

import msgspec

# Attributes every LogRecord has; anything else came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
_encoder = msgspec.json.Encoder()


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update((k, v) for k, v in vars(record).items() if k not in _STANDARD)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(line).decode()


def configure(level: str = "INFO") -> None:
    """Send all logging to stderr as JSON lines at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
