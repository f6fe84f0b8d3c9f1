"""Why a message is not counted: the ``reason`` of every rejected message.

Reasons are short and stable so that consumers of ``rejected/...`` can
filter on them. Two carry a name after a colon: ``invalid: <field>`` and
``overflow: <total>`` (:meth:`Reason.of`).
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    UNDECODABLE = "undecodable"
    INVALID = "invalid"
    """Written ``invalid: <field>``."""
    LATE = "late"
    FUTURE = "future"
    TOO_LARGE = "too large"
    OVERFLOW = "overflow"
    """Written ``overflow: <total>``: a uint32 total would wrap."""
    UNKNOWN_TOPIC = "unknown topic"
    INTERNAL_ERROR = "internal error"
    """An exception of ours met this event (a bug); the flow goes on."""
    UNENCODABLE = "unencodable"
    """A stats record the output format cannot carry (a bug)."""

    def of(self, name: str) -> str:
        """The reason with the field or total it concerns: ``invalid: rating``."""
        return f"{self.value}: {name}"
