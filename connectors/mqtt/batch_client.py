"""paho's client, reading every whole packet a socket read brings; MQTT 5 PUBLISH decoded by the ``mqtt5`` codec.

paho 2.2 reads a packet with three socket reads (its first byte, its length,
its body) and goes back to ``select`` after each packet, and decodes an
MQTT 5 PUBLISH in Python (its properties as objects): about 30-40 µs per
received message, the input's largest cost. :class:`BatchReadingClient` is
paho's client with one method replaced, ``_packet_read``: it reads up to
256 KiB at once and handles every whole packet in it. A QoS 0/1 PUBLISH of
MQTT 5 is decoded by `mqtt5 <https://pypi.org/project/mqtt5/>`_ (a
maintained codec, Rust, prebuilt wheels) into the same
``paho.mqtt.client.MQTTMessage`` paho would build, and given to
``on_message`` as paho would (under its callback lock, acknowledged by
paho's ``ack`` with manual acks, else at once); a successful PUBACK without
properties (2 bytes) goes to ``on_publish`` as paho would, with one shared
success reason code; every other packet (CONNACK, SUBACK, other PUBACKs,
PINGRESP, DISCONNECT, QoS 2, MQTT 3.1.1 PUBLISH, or a PUBLISH the codec
refuses) goes to paho's own handler, so sessions, keepalive and
reconnecting stay paho's. :meth:`BatchReadingClient.ack_all` writes many
PUBACKs at once. Bytes of a packet not yet whole wait for the
next read (``select`` wakes for those).

paho's ``_packet_read``, ``_packet_handle``, ``_in_packet``,
``_do_on_publish``, ``_out_messages``, ``_packet_queue`` and ``_sock_recv`` are private: this is pinned to paho-mqtt 2.2.0
(pyproject.toml), and ``tests/connectors/test_batch_client.py`` checks it
against paho's own decoding.

>>> from paho.mqtt.enums import CallbackAPIVersion
>>> client = BatchReadingClient(CallbackAPIVersion.VERSION2, client_id="example", protocol=paho.MQTTv5)
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import mqtt5
import paho.mqtt.client as paho
from paho.mqtt.client import MQTT_LOG_DEBUG, MQTT_LOG_ERR, MQTTErrorCode
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

_READ_SIZE = 256 * 1024
_PUBLISH = 0x30
_PUBACK = 0x40
_PUBACK_PACKET = struct.Struct("!BBH")  # type, remaining length 2, packet id: paho's PUBACK
# What paho decodes a 2-byte PUBACK into, made once: read-only for on_publish.
_PUBACK_SUCCESS = ReasonCode(PacketTypes.PUBACK)
_PUBACK_PROPERTIES = Properties(PacketTypes.PUBACK)


class BatchReadingClient(paho.Client):
    """A ``paho.mqtt.client.Client`` that handles every whole packet of one socket read (see the module)."""

    _pending = b""  # the start of a packet not yet whole

    def reconnect(self) -> MQTTErrorCode:
        self._pending = b""  # a new connection starts with a new packet
        return super().reconnect()

    def _packet_read(self) -> MQTTErrorCode:
        try:
            data = self._sock_recv(_READ_SIZE)
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_AGAIN
        except OSError as err:
            self._easy_log(MQTT_LOG_ERR, "failed to receive on socket: %s", err)
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        if not data:
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        buf = self._pending + data if self._pending else data
        end, pos, view = len(buf), 0, memoryview(buf)
        fast = self._protocol == paho.MQTTv5
        while end - pos >= 2:
            # The fixed header: type and flags, then the remaining length (1-4 bytes, 7 bits each).
            command, length, shift, at = buf[pos], 0, 0, pos + 1
            while at < end:
                byte = buf[at]
                at += 1
                length |= (byte & 0x7F) << shift
                if byte < 0x80:
                    break
                shift += 7
                if shift > 21:
                    return MQTTErrorCode.MQTT_ERR_PROTOCOL
            else:
                break  # the length is not whole yet
            if at + length > end:
                break  # the packet is not whole yet
            packet_end = at + length
            if command == _PUBACK and length == 2:  # success, no properties: the common one
                rc = self._puback((buf[at] << 8) | buf[at + 1])
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self._pending = b""
                    return rc
            elif not (fast and command & 0xF0 == _PUBLISH and command & 0x06 != 0x04
                      and self._deliver(view[pos:packet_end])):
                rc = self._handle_with_paho(command, buf[at:packet_end], length)
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self._pending = b""
                    return rc
            pos = packet_end
            if self._sock is None:  # a handler disconnected us
                self._pending = b""
                return MQTTErrorCode.MQTT_ERR_NO_CONN
        self._pending = buf[pos:]
        with self._msgtime_mutex:
            self._last_bytes_received = paho.time_func()
        return MQTTErrorCode.MQTT_ERR_AGAIN  # all read: back to select

    def _deliver(self, packet_bytes: memoryview) -> bool:
        """Decode a QoS 0/1 PUBLISH with the codec and hand it to ``on_message``; False: let paho do it."""
        try:
            packet, _ = mqtt5.read(packet_bytes)
            topic = packet.topic.encode()
        except BaseException:  # noqa: BLE001 - refused (or panicked) by the codec: paho decides
            return False
        message = paho.MQTTMessage(packet.packet_id or 0, topic)
        message.qos = qos = int(packet.qos)
        message.dup = packet.duplicate
        message.retain = packet.retain
        message.payload = packet.payload
        props = packet.user_properties
        if props:
            message.properties = Properties(PacketTypes.PUBLISH)
            message.properties.UserProperty = props
        with self._callback_mutex:
            on_message = self.on_message
        if on_message is not None:
            with self._in_callback_mutex:
                try:
                    on_message(self, self._userdata, message)
                except Exception as err:
                    self._easy_log(MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                    if not self.suppress_exceptions:
                        raise
        if qos == 1 and not self._manual_ack:
            self._send_puback(message.mid)
        return True

    def ack_all(self, acks: Iterable[tuple[int, int]]) -> int:
        """``ack(mid, qos)`` for every ``(mid, qos)``, the PUBACKs as one packet of bytes; how many were sent.

        paho queues a packet, and makes a system call, per acknowledgement;
        these PUBACKs (4 bytes each, as paho writes them) go out in one
        write. Other QoS go through ``ack``.
        """
        pubacks, count = bytearray(), 0
        for mid, qos in acks:
            if qos == 1 and self._manual_ack:
                pubacks += _PUBACK_PACKET.pack(_PUBACK, 2, mid)
                count += 1
            elif qos > 0:
                count += self.ack(mid, qos) == MQTTErrorCode.MQTT_ERR_SUCCESS
        if pubacks:
            self._packet_queue(_PUBACK, bytes(pubacks), 0, 1)
        return count

    def _puback(self, mid: int) -> MQTTErrorCode:
        """A successful PUBACK without properties, as paho's ``_handle_pubackcomp`` takes it."""
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, _PUBACK_SUCCESS, _PUBACK_PROPERTIES)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_with_paho(self, command: int, body: bytes, length: int) -> MQTTErrorCode:
        self._in_packet = {
            "command": command,
            "have_remaining": 1,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": length,
            "packet": bytearray(body),
            "to_process": 0,
            "pos": 0,
        }
        try:
            return self._packet_handle()
        except MalformedPacket as exc:
            self._easy_log(MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
