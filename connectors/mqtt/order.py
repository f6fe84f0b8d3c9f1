"""Does the broker keep a session's order across topics, and deliver a client's own messages back?

The input relies on both (:mod:`.watermarks`: an idle probe a partition
publishes to itself proves that nothing published before it is still
queued for the session; :mod:`.partitions`: a partition marker proves the
same for a change of the partition count). MQTT promises order per topic
only. Mosquitto and RabbitMQ keep one queue per session, so both hold; NATS
keeps a JetStream consumer per subscription and never delivers a client's
own messages back to it.

:func:`check_session_order` finds out at start: a session subscribed to two
topics under ``connectors-mqtt/order/<checker's client id>/`` gets, while offline,
messages published alternately on both, and must read them back in publish
order; then it must receive a message it publishes itself. It leaves no
session behind.
"""

from __future__ import annotations

import threading
import time

from .connection import MQTTConnection, connect
from .names import ROOT, client_id_of, reader_client_id
from .ownership import read_markers

MESSAGES = 20
"""Messages published across the two topics while the session is offline."""


def check_session_order(connection: MQTTConnection, client_id: str, timeout: float = 5.0) -> str | None:
    """None where the broker keeps both properties; else what it did instead, in a few words."""
    checker_id = reader_client_id(client_id, "order")  # unique: several processes check at once
    level = f"{ROOT}/order/{checker_id}"
    topics = (f"{level}/a", f"{level}/b")
    got: list[bytes] = []
    arrived = threading.Condition()

    def on_message(_client, _userdata, msg) -> None:
        with arrived:
            got.append(msg.payload)
            arrived.notify_all()

    def session(clean: bool):
        client = connection.client(checker_id, persistent=not clean)
        client.on_message = on_message
        connect(client, connection, label=checker_id)
        return client

    def wait(count: int) -> None:
        with arrived:
            arrived.wait_for(lambda: len(got) >= count, timeout)

    client = session(clean=False)
    client.subscribe([(t, 1) for t in topics])
    time.sleep(0.2)  # the SUBACK
    client.disconnect(), client.loop_stop()
    publisher = connection.client(checker_id + "-pub")
    connect(publisher, connection, label=checker_id)
    sent = [f"{n}".encode() for n in range(MESSAGES)]
    infos = [publisher.publish(topics[n % 2], payload, qos=1) for n, payload in enumerate(sent)]
    for info in infos:
        info.wait_for_publish(timeout)
    publisher.disconnect(), publisher.loop_stop()
    try:
        client = session(clean=False)
        wait(MESSAGES)
        if got[:MESSAGES] != sent:
            order = " ".join(p.decode() for p in got[:MESSAGES])
            return (f"a session's messages on two topics came back out of publish order "
                    f"(0..{MESSAGES - 1} published alternately, read: {order or 'none'})")
        client.publish(topics[0], b"own", qos=1)
        wait(MESSAGES + 1)
        if got[MESSAGES:] != [b"own"]:
            return "a client's own QoS 1 message is not delivered back to it"
        return None
    finally:
        client.disconnect(), client.loop_stop()
        client = session(clean=True)  # leaves no session behind
        client.disconnect(), client.loop_stop()


def count_change(connection: MQTTConnection, client_id: str, partitions: int) -> str | None:
    """What a start with ``partitions`` input partitions would change of the count the markers record; None: nothing.

    A change (or one still under way) is what a broker without cross-topic
    order cannot carry: the markers would not prove the hand-over.
    """
    markers = read_markers(connection, client_id, label=client_id_of(client_id, "in"))
    live = {k: m for k, m in markers.items() if not m.retired}
    counts = sorted({m.partitions for m in live.values()})
    if not live or (counts == [partitions] and not any(m.draining_from for m in live.values())
                    and all(k < partitions for k in live)):
        return None
    return f"the partition markers record {'/'.join(map(str, counts))} partitions, this start has {partitions}"
