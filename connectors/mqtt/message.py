"""The items of the MQTT source and sink."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MQTTMessage:
    """One MQTT message, in or out.

    Args:
        topic: The topic it was received on, or is published to.
        payload: The bytes, sent as given.
        user_properties: MQTT 5 user properties, in order. Input messages
            carry them only with ``protocol="5"``; a sink that fell back to
            MQTT 3.1.1 drops them.
        partition: Input messages: the index of the source partition that
            read it (``in-<partition>``, its watermark's index). Not part
            of the message's identity (equality); a sink ignores it.
    """

    topic: str
    payload: bytes
    user_properties: tuple[tuple[str, str], ...] = ()
    partition: int = field(default=0, compare=False)

    def user_property(self, name: str) -> str | None:
        """The first user property ``name``, or None."""
        return next((v for k, v in self.user_properties if k == name), None)

    def rejected(
        self, reason: str, detail: str | None = None, prefix: str = "rejected/"
    ) -> MQTTMessage:
        """This message, unchanged, for ``<prefix><topic>`` with user properties
        ``reason`` (and ``detail``): a dead-letter copy of it."""
        props: tuple[tuple[str, str], ...] = (("reason", reason),)
        if detail is not None:
            props += (("detail", detail),)
        return MQTTMessage(prefix + self.topic, self.payload, props)


@dataclass(frozen=True)
class MQTTError:
    """A received message that cannot go on, and why (e.g. ``too large: ...``).

    Args:
        message: The message as received.
        reason: One line saying why.
    """

    message: MQTTMessage
    reason: str
