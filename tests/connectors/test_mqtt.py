"""connectors.mqtt against a private mosquitto, with real Bytewax flows."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Self

import paho.mqtt.client as paho
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.mqtt import (
    COMMIT_TICK,
    MQTTConnectError,
    MQTTConnection,
    MQTTMessage,
    MQTTPublishError,
    MQTTSink,
    MQTTSource,
)
from connectors.mqtt import progress as progress_module
from connectors.mqtt import refusals as refusals_module
from connectors.mqtt import sink as sink_module
from connectors.mqtt.ownership import read_markers
from connectors.mqtt.testing import (
    Collector,
    Mosquitto,
    Publisher,
    TlsFiles,
    process_alive,
    wait_for,
)

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]

FLOW = textwrap.dedent(
    """
    import logging, os
    from bytewax import operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink
    from connectors import mqtt
    from connectors.mqtt import operators as mop

    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
    logging.getLogger("connectors.mqtt").setLevel(logging.DEBUG)
    env = os.environ
    conn = mqtt.MQTTConnection(host="127.0.0.1", port=int(env["T_PORT"]))
    flow = Dataflow("echo")
    inp = mop.input("in", flow, connection=conn, topics=env["T_TOPICS"].split(","),
                    client_id="flow", max_message_bytes=int(env["T_MAX"]))
    seen = open(env["T_SEEN"], "a", buffering=1)
    op.inspect("seen", inp.oks, lambda _s, m: seen.write(m.payload.decode() + "\\n"))
    if env.get("T_ECHO", "1") == "1":
        out = op.map("echo", inp.oks, lambda m: mqtt.MQTTMessage("out/" + m.topic, m.payload))
        rej = op.map("reject", inp.errs, lambda e: e.message.rejected("too large", e.reason))
        mop.output("out", op.merge("all", out, rej), connection=conn, client_id="flow")
    else:  # read only
        op.output("discard", inp.oks, TestingSink([]))
    """
)


class Flow:
    """The echo flow above, as a `python -m bytewax.run` subprocess."""

    def __init__(self, tmp: Path, broker: Mosquitto, topics, *, max_bytes=1000,
                 recovery: Path | None = None, epoch_s: int = 1, echo: bool = True) -> None:
        (tmp / "echo_flow.py").write_text(FLOW)
        self.tmp, self.seen, self.log = tmp, tmp / "seen.txt", tmp / "flow.log"
        self.env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{tmp}", T_PORT=str(broker.port),
                        T_TOPICS=",".join(topics), T_MAX=str(max_bytes), T_SEEN=str(self.seen),
                        T_ECHO="1" if echo else "0")
        self.recovery = recovery
        if recovery is not None and not recovery.exists():
            recovery.mkdir()
            subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"],
                           check=True, env=self.env, capture_output=True)
        self.epoch_s = epoch_s
        self.proc: subprocess.Popen | None = None

    def start(self, epoch_s: int | None = None) -> Flow:
        args = [sys.executable, "-m", "bytewax.run", "echo_flow:flow", "-w", "1",
                "-s", str(epoch_s or self.epoch_s)]
        if self.recovery is not None:
            args += ["-r", str(self.recovery), "-b", "0"]
        text = self.log.read_text() if self.log.exists() else ""
        self.starts, self.subscribes = text.count(" connected ("), text.count(" subscribed to ")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, cwd=self.tmp, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT)
        wait_for(lambda: self.connected() or self.proc.poll() is not None, 20, "flow connected")
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        return self

    def connected(self) -> bool:
        # The input partition (one for all topics) logs one "connected" line
        # and, once the broker acknowledged its subscriptions, one
        # "subscribed" line (what is published before that never reaches a
        # new session); the output connects at the first commit tick, once
        # the dataflow runs.
        text = self.log.read_text() if self.log.exists() else ""
        lines = 2 if self.env["T_ECHO"] == "1" else 1
        return (text.count(" connected (") >= self.starts + lines
                and text.count(" subscribed to ") >= self.subscribes + 1)

    def seen_lines(self) -> list[str]:
        return self.seen.read_text().split() if self.seen.exists() else []

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


@pytest.fixture
def clients(mosquitto):
    made = []

    def make(kind, *args, **kwargs):
        made.append(kind(mosquitto, *args, **kwargs))
        return made[-1]

    yield make
    for c in made:
        c.close()


def nums(prefix: str, start: int, stop: int) -> list[bytes]:
    return [f"{prefix}{i}".encode() for i in range(start, stop)]


# -- whole flows ---------------------------------------------------------------


def test_round_trip_in_order_with_rejected_user_properties(mosquitto, clients, tmp_path):
    out = clients(Collector, "out/#", "rejected/#")
    pub = clients(Publisher)
    with Flow(tmp_path, mosquitto, ["in/a", "in/b"], max_bytes=100):
        pub.publish("in/a", nums("a", 0, 300), wait=False)
        pub.publish("in/b", nums("b", 0, 300), wait=False)
        pub.publish("in/a", [b"x" * 101])
        wait_for(lambda: len(out.payloads("out/in/a")) >= 300 and len(out.payloads("out/in/b")) >= 300
                 and out.payloads("rejected/in/a"), 30, "echoes")
    assert out.payloads("out/in/a") == nums("a", 0, 300)  # in order, once
    assert out.payloads("out/in/b") == nums("b", 0, 300)
    [rejected] = [m for m in out.messages if m.topic == "rejected/in/a"]
    assert rejected.payload == b"x" * 101  # the original bytes
    assert rejected.user_property("reason") == "too large"
    assert rejected.user_property("detail") == "too large: 101 bytes > max 100"


def test_flow_killed_then_restarted_gets_messages_published_meanwhile(mosquitto, clients, tmp_path):
    out = clients(Collector, "out/#")
    pub = clients(Publisher)
    flow = Flow(tmp_path, mosquitto, ["in/a"]).start()
    try:
        pub.publish("in/a", nums("m", 0, 50))
        wait_for(lambda: len(out.payloads("out/in/a")) >= 50, 20, "first 50")
        flow.kill()
        pub.publish("in/a", nums("m", 50, 120))  # nobody connected
        flow.start()
        wait_for(lambda: set(nums("m", 0, 120)) <= set(out.payloads("out/in/a")), 20, "all 120")
    finally:
        flow.kill()


def test_uncommitted_messages_are_redelivered_after_kill(mosquitto, clients, tmp_path):
    out = clients(Collector, "out/#")
    pub = clients(Publisher)
    flow = Flow(tmp_path, mosquitto, ["in/a"], recovery=tmp_path / "recovery")
    try:
        # A 60 s epoch: nothing commits, so nothing is acknowledged.
        flow.start(epoch_s=60)
        pub.publish("in/a", nums("u", 0, 5))
        wait_for(lambda: len(flow.seen_lines()) >= 5, 20, "5 seen")
        flow.kill()
        # 1 s epochs now: the 5 come again, then commit and are acknowledged.
        flow.start(epoch_s=1)
        wait_for(lambda: flow.seen_lines().count("u4") == 2, 20, "redelivery")
        assert sorted(flow.seen_lines()) == sorted([f"u{i}" for i in range(5)] * 2)
        pub.publish("in/a", [b"mark1"])
        wait_for(lambda: "mark1" in flow.seen_lines(), 20, "mark1")
        acks = flow.log.read_text().count("acknowledged")
        wait_for(lambda: flow.log.read_text().count("acknowledged") > acks, 20, "mark1 acked")
        flow.kill()
        flow.start(epoch_s=1)
        pub.publish("in/a", [b"mark2"])
        # Redeliveries would come before mark2 (same session, in order).
        wait_for(lambda: "mark2" in flow.seen_lines(), 20, "mark2")
        assert flow.seen_lines().count("u0") == 2 and flow.seen_lines().count("mark1") == 1
        assert set(nums("u", 0, 5)) <= set(out.payloads("out/in/a"))
    finally:
        flow.kill()


def test_broker_restart_mid_stream_loses_nothing(mosquitto, clients, tmp_path):
    out = clients(Collector, "out/#")
    pub = clients(Publisher)
    with Flow(tmp_path, mosquitto, ["in/a"]) as flow:
        stop = threading.Event()

        def produce():
            for i in range(0, 600, 20):
                if stop.is_set():
                    return
                pub.publish("in/a", nums("r", i, i + 20), wait=False)
                time.sleep(0.02)

        producer = threading.Thread(target=produce)
        producer.start()
        try:
            wait_for(lambda: len(out.payloads("out/in/a")) >= 100, 20, "stream started")
            mosquitto.stop()
            mosquitto.start()
        finally:
            producer.join(30)
        try:
            wait_for(lambda: set(nums("r", 0, 600)) <= set(out.payloads("out/in/a")), 40,
                     "all 600 after broker restart")
        except AssertionError:
            missing = set(nums("r", 0, 600)) - set(out.payloads("out/in/a"))
            seen = set(flow.seen_lines())
            print("MISSING", len(missing), sorted(missing)[:10], "seen", len(seen), len({m.decode() for m in missing} & seen))
            print(flow.log.read_text()[-3000:])
            print(mosquitto.log_tail(40))
            raise
        wait_for(lambda: flow.log.read_text().count("reconnected") >= 2, 20, "input and output reconnected")


# -- partitions driven directly (cheaper than a flow) ----------------------------


def make_certs(tmp: Path) -> tuple[Path, Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    now = dt.datetime.now(dt.UTC)
    ca_key, srv_key = key(), key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    srv = (x509.CertificateBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
           .issuer_name(ca_name).public_key(srv_key.public_key()).serial_number(2)
           .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=1))
           .add_extension(x509.SubjectAlternativeName(
               [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
               critical=False)
           .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    paths = tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(srv.public_bytes(pem))
    paths[2].write_bytes(srv_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return paths


def publish_committed(part, messages: list) -> None:
    """What the dataflow does: the messages come in an epoch, the epoch ends, a commit tick follows."""
    part.write_batch(messages)
    part.snapshot()
    part.write_batch([COMMIT_TICK])


def drain(part, n: int, timeout: float = 10.0) -> list:
    got: list = []
    wait_for(lambda: got.extend(part.next_batch()) or len(got) >= n, timeout, f"{n} messages")
    return got


def test_tls_and_password(tmp_path):
    ca, cert, key = make_certs(tmp_path)
    with Mosquitto(tmp_path / "broker", users={"flow": "s3cret pw"},
                   tls=TlsFiles(str(cert), str(key))) as broker:
        good = MQTTConnection(host="127.0.0.1", port=broker.port, tls=True, ca_file=str(ca),
                              username="flow", password="s3cret pw")
        assert "s3cret" not in repr(good) and "password=***" in repr(good)
        src = MQTTSource(good, ["in/t"], client_id="tls")
        part = src.build_part("in", "in-0", None)
        sink_part = MQTTSink(good, client_id="tls").build_part("out", "0", None)
        try:
            publish_committed(sink_part, [MQTTMessage("in/t", b"over tls", (("reason", "r"),))])
            assert [m.payload for m in drain(part, 1)] == [b"over tls"]
        finally:
            part.close()
            sink_part.close()

        def refused(conn: MQTTConnection) -> str:
            with pytest.raises(MQTTConnectError) as info:
                MQTTSource(conn, ["in/t"], client_id="tls").build_part("in", "in-0", None)
            text = str(info.value)
            assert "\n" not in text and f"127.0.0.1:{broker.port}" in text
            assert "s3cret" not in text
            return text

        anonymous = MQTTConnection(host="127.0.0.1", port=broker.port, tls=True, ca_file=str(ca))
        assert "refused the connection: Not authorized" in refused(anonymous)
        bad_pw = MQTTConnection(**{**good.__dict__, "password": "wrong s3cret"})
        assert "refused the connection" in refused(bad_pw)
        no_ca = MQTTConnection(**{**good.__dict__, "ca_file": None})
        assert "TLS certificate verification failed" in refused(no_ca)
        plain = MQTTConnection(**{**good.__dict__, "tls": False, "connect_timeout": 1.0})
        refused(plain)  # a plain client on a TLS port: no CONNACK / connection reset


@pytest.mark.parametrize("own_process", [False, True], ids=["in-worker", "own-process"])
def test_unreachable_broker_is_one_clear_line(own_process):
    from connectors.mqtt.testing import free_port

    port = free_port()
    conn = MQTTConnection(host="127.0.0.1", port=port, password="hunter2")
    with pytest.raises(MQTTConnectError) as info:
        MQTTSource(conn, ["x"], client_id="c", own_process=own_process).build_part("in", "in-0", None)
    assert str(info.value) == (
        f"cannot connect to MQTT broker 127.0.0.1:{port} as c-in-0: connection refused"
    )


def test_mqtt5_receive_maximum_bounds_unacked_deliveries_and_acks_wait_for_the_epoch(tmp_path):
    # Mosquitto at its default in-flight limit (20): the Receive Maximum we send rules instead
    # (mosquitto 2.0.11 keeps to it for the first window only; later ones it floods).
    broker = Mosquitto(tmp_path, default_limits=True).start()
    pub = Publisher(broker)
    conn = MQTTConnection(host="127.0.0.1", port=broker.port)
    src = MQTTSource(conn, ["in/b"], client_id="bound", max_unacked=30, batch_size=7)
    part = src.build_part("in", "in-0", None)
    got: list = []
    try:
        assert part.stats.inflight_cap == 30
        # The partition's own marker (QoS 1, in its stream, acked at once) first:
        # mosquitto 2.0.11 may exceed the window when an ack comes while it is full.
        wait_for(lambda: 0 in read_markers(conn, "bound"), 5, "the partition's marker")
        time.sleep(0.3)
        pub.publish("in/b", nums("b", 0, 100))
        wait_for(lambda: got.extend(part.next_batch()) or len(got) >= 30, 10, "the first window")
        time.sleep(0.5)
        got.extend(part.next_batch())
        assert len(got) == 30 and part._intake.unacked == 30, "nothing acknowledged before a commit"

        def one_epoch() -> bool:
            part.snapshot()  # end of the epoch; the next next_batch means it committed: ack
            got.extend(part.next_batch())
            return len(got) >= 100

        wait_for(one_epoch, 20, "all 100")
        assert [m.payload for m in got] == nums("b", 0, 100)
        part.snapshot()
        part.next_batch()
        assert not part._intake.held and not part._intake.committable
    finally:
        part.close()
    # The acks reached the broker: a new partition with the same id gets nothing old.
    part = src.build_part("in", "in-0", None)
    try:
        pub.publish("in/b", [b"fresh"])
        assert [m.payload for m in drain(part, 1)] == [b"fresh"]
    finally:
        part.close()
        pub.close()
        broker.stop()


def test_a_reused_packet_id_is_a_new_message_only_a_dup_copy_is_a_redelivery(mosquitto):
    # A broker with more than 65,535 deliveries in flight (mosquitto 2.0 with
    # max_inflight_messages 0) reuses packet ids that are still held here.
    conn = MQTTConnection(host="127.0.0.1", port=mosquitto.port)
    part = MQTTSource(conn, ["in/r"], client_id="reuse").build_part("in", "in-0", None)

    def delivery(mid: int, payload: bytes, dup: bool = False):
        msg = paho.MQTTMessage(mid, b"in/r")
        msg.payload, msg.qos, msg.dup = payload, 1, dup
        return msg

    try:
        for msg in (delivery(7, b"first"), delivery(7, b"second"), delivery(7, b"first", dup=True)):
            part._on_message(part._link.client, None, msg)
        assert [m.payload for m in part.next_batch()] == [b"first", b"second"]
        assert part.stats.redeliveries_skipped == 1 and part._intake.unacked == 2
    finally:
        part.close()


def test_a_burst_past_the_packet_id_space_with_the_default_epoch_is_read_exactly_once(mosquitto, clients, tmp_path):
    # Acknowledgements wait for each 10 s epoch's commit: the burst crosses
    # two epochs, at most max_unacked (50,000) read per epoch, and more than
    # the 65,535 packet ids, so the broker reuses ids.
    pub = clients(Publisher)
    flow = Flow(tmp_path, mosquitto, ["in/burst"], recovery=tmp_path / "recovery", epoch_s=10, echo=False)
    flow.start()
    try:
        burst = nums("p", 0, 70_000)
        pub.publish("in/burst", burst, wait=False)
        wait_for(lambda: time.sleep(0.5) or len(flow.seen_lines()) >= len(burst), 120, "70,000 messages")
        time.sleep(1)
        seen = flow.seen_lines()
        assert len(seen) == len(burst) and set(seen) == {b.decode() for b in burst}
    finally:
        flow.kill()


def test_a_broker_at_its_default_limits_does_not_throttle_the_flow(tmp_path):
    # Mosquitto's default max_inflight_messages 20 would mean 20 messages
    # per epoch while acknowledgements wait for commits (250 s for 5,000).
    broker = Mosquitto(tmp_path / "broker", default_limits=True).start()
    pub = Publisher(broker)
    flow = Flow(tmp_path, broker, ["in/d"], recovery=tmp_path / "recovery", epoch_s=1, echo=False).start()
    try:
        pub.publish("in/d", nums("d", 0, 5000))
        wait_for(lambda: time.sleep(0.2) or len(flow.seen_lines()) >= 5000, 20, "5,000 messages at full speed")
    finally:
        flow.kill()
        pub.close()
        broker.stop()


def test_mqtt311_stops_reading_at_the_unacked_bound(mosquitto, clients):
    pub = clients(Publisher)
    conn = MQTTConnection(host="127.0.0.1", port=mosquitto.port, keepalive=4)
    src = MQTTSource(conn, ["in/b"], client_id="bound311", max_unacked=10, batch_size=7, protocol="3.1.1")
    part = src.build_part("in", "in-0", None)
    try:
        pub.publish("in/b", nums("b", 0, 100))
        wait_for(lambda: len(part._intake.held) >= 10, 10, "bound reached")
        full_at = time.monotonic()
        time.sleep(1.5)
        # At the bound, the network thread takes one message per wake-up (1 s here).
        wake_ups = (time.monotonic() - full_at) / part._intake.block_s
        assert len(part._intake.held) <= 10 + int(wake_ups) + 1 < 100
        got: list = []

        def one_epoch() -> bool:
            got.extend(part.next_batch())  # acks what the last snapshot covered
            part.snapshot()
            return len(got) >= 100

        wait_for(one_epoch, 30, "100 messages, a bounded number per epoch")
        assert [m.payload for m in got] == nums("b", 0, 100)
    finally:
        part.close()


def read_partitions(src: MQTTSource, n: int, what: str, after_open=lambda: None) -> tuple[list, list]:
    """Open every partition of ``src``, read until they hold ``n`` messages between them, close.

    Returns what each partition read and its counters.
    """
    parts = [src.build_part("in", key, None) for key in src.list_parts()]
    try:
        after_open()
        got: list[list] = [[] for _ in parts]
        wait_for(lambda: [got[i].extend(p.next_batch()) for i, p in enumerate(parts)]
                 and sum(map(len, got)) >= n, 10, what)
        time.sleep(0.3)  # nothing more should come
        for i, p in enumerate(parts):
            got[i].extend(p.next_batch())
        return got, [p.stats for p in parts]
    finally:
        for p in parts:
            p.close()


@pytest.mark.parametrize("own_process", [False, True], ids=["in-worker", "own-process"])
def test_partitions_read_their_shards_once_each_in_publish_order_and_ids_are_stable(mosquitto, clients,
                                                                                     own_process):
    pub = clients(Publisher)
    conn = MQTTConnection(host="127.0.0.1", port=mosquitto.port)
    src = MQTTSource(conn, ["in/s", "in/t"], client_id="grp", partitions=2, shards=4, own_process=own_process)
    assert src.list_parts() == ["in-0", "in-1"]
    assert src.client_id_for(1) == "grp-in-1"
    # Interleaved over the plain topic and its 4 shards.
    sent = [(["in/s", "in/s/0", "in/s/1", "in/s/2", "in/s/3"][i % 5], f"s{i}".encode()) for i in range(50)]

    def publish():
        for topic, payload in sent:
            pub.publish(topic, [payload])

    got, stats = read_partitions(src, 50, "50", after_open=publish)
    owns = {0: ("in/s", "in/s/0", "in/s/2"), 1: ("in/s/1", "in/s/3")}
    for i in range(2):
        # Each partition receives exactly its shards (the plain topic on 0), in publish order,
        # and nothing else: the broker delivers every message once.
        assert [m.payload for m in got[i]] == [p for t, p in sent if t in owns[i]]
        assert {m.partition for m in got[i]} == {i}  # which partition read it: what a step counts per partition
        assert stats[i].passed_on == 0
    # Reopened: the same messages come again (never committed, so never acknowledged).
    again, stats = read_partitions(src, 50, "the 50 redelivered")
    for i in range(2):
        assert [m.payload for m in again[i]] == [m.payload for m in got[i]]
    with pytest.raises(ValueError):
        MQTTSource(conn, ["a/#"], client_id="x")


def test_sink_built_during_a_broker_outage_waits_for_the_broker(mosquitto, clients):
    # Bytewax builds sink partitions at the first output, which can fall in an outage.
    out = clients(Collector, "out/#", client_id="sink-wait-collector")
    conn = MQTTConnection(host="127.0.0.1", port=mosquitto.port)
    mosquitto.stop()
    threading.Timer(1.5, mosquitto.start).start()
    part = MQTTSink(conn, client_id="late-sink", timeout=30).build_part("out", "0", None)
    try:
        publish_committed(part, [MQTTMessage("out/x", b"after", (("reason", "r"),))])
        wait_for(lambda: out.payloads("out/x") == [b"after"], 15, "message after the outage")
        assert [m.user_properties for m in out.messages] == [(("reason", "r"),)]  # still MQTT 5
    finally:
        part.close()


def test_the_sink_waits_out_a_broker_outage_by_default(mosquitto, clients):
    # The old sink gave up after a fixed timeout and the process exited.
    out = clients(Collector, "out/#", client_id="outage-collector")
    conn = MQTTConnection(host="127.0.0.1", port=mosquitto.port)
    # With more than max_inflight records unacknowledged, the worker waits.
    impatient = MQTTSink(conn, client_id="impatient", timeout=2, max_inflight=1).build_part("out", "0", None)
    patient = MQTTSink(conn, client_id="patient", max_inflight=10).build_part("out", "0", None)
    try:
        mosquitto.stop()
        with pytest.raises(MQTTPublishError, match="within 2s"):
            publish_committed(impatient, [MQTTMessage("out/gone", b"x"), MQTTMessage("out/gone", b"y")])
        threading.Timer(6, mosquitto.start).start()
        started = time.monotonic()
        publish_committed(patient, [MQTTMessage("out/x", b"%d" % i) for i in range(50)])
        assert time.monotonic() - started >= 5, "it waited for the broker"
        wait_for(lambda: len(out.payloads("out/x")) >= 50, 20, "all 50 after the outage")
        assert sorted(out.payloads("out/x")) == sorted(b"%d" % i for i in range(50))
    finally:
        impatient.close()
        patient.close()


def crash(part) -> None:
    """Drop the partition as kill -9 would: no close(), nothing more published."""
    if hasattr(part, "pid"):  # in a process of its own
        os.kill(part.pid, signal.SIGKILL)
        wait_for(lambda: not process_alive(part.pid), 10, "the partition's process to die")
        return
    client = part._link.client
    client._thread_terminate = True
    if client._sockpairW is not None:
        client._sockpairW.send(b"0")  # wake the network thread now, not at its select()'s 1 s timeout
    client.loop_stop()
    client._sock_close()


@pytest.mark.parametrize("own_process", [False, True], ids=["in-worker", "own-process"])
def test_sink_publishes_a_record_once_its_epoch_is_committed_and_once_only_after_a_crash(mosquitto, clients,
                                                                                         own_process):
    out = clients(Collector, "out/#", client_id="gated-collector")
    conn = MQTTConnection(host="127.0.0.1", port=mosquitto.port)
    written: list = []
    sink = MQTTSink(conn, client_id="gated", own_process=own_process,
                    on_written=lambda messages, _seconds: written.extend(messages))
    msgs = [MQTTMessage("out/x", b"m%d" % i) for i in range(6)]

    part = sink.build_part("out", "0", None)
    part.write_batch(msgs[:2])
    time.sleep(0.5)
    assert out.payloads("out/x") == [], "published before its epoch ended"
    committed_1 = part.snapshot()  # the end of epoch 1 (say it commits)
    part.write_batch([msgs[2]])  # epoch 2, before the commit of 1 is proven
    time.sleep(0.5)
    assert out.payloads("out/x") == [], "published before its epoch was committed"
    part.write_batch([COMMIT_TICK])  # epoch 1 is committed
    wait_for(lambda: out.payloads("out/x") == [b"m0", b"m1"], 10, "epoch 1's records")
    # (A partition in a process of its own gives its state pickled, as Bytewax stores it.)
    def records(state):
        return (pickle.loads(state) if own_process else state).records
    wait_for(lambda: records(part.snapshot()) == [(2, msgs[2])], 10, "m0, m1 acknowledged")
    part.write_batch([msgs[3]])
    committed_2 = part.snapshot()  # epoch 2 ends holding m2 and m3; it commits, and then
    assert written == msgs[:2]  # on_written, in the worker (from a process of its own: with the snapshot)
    crash(part)  # the process dies before the tick

    # Resumed from epoch 1's snapshot (as if 2 had not committed): m0 and m1 are
    # on the broker already (its progress marker says so); nothing is repeated.
    again = sink.build_part("out", "0", committed_1)
    time.sleep(0.5)
    assert out.payloads("out/x") == [b"m0", b"m1"]
    again.close()

    # Resumed from epoch 2's snapshot: its committed records go out, once.
    resumed = sink.build_part("out", "0", committed_2)
    wait_for(lambda: out.payloads("out/x") == [b"m0", b"m1", b"m2", b"m3"], 10, "epoch 2's records")
    resumed.write_batch([msgs[4]])
    resumed.snapshot()
    resumed.write_batch([COMMIT_TICK, msgs[5]])
    resumed.close()  # the dataflow ended: what is left goes out
    wait_for(lambda: len(out.payloads("out/x")) >= 6, 10, "all six")
    time.sleep(0.3)
    assert out.payloads("out/x") == [m.payload for m in msgs]


def test_sink_with_fewer_partitions_still_publishes_what_a_dropped_partition_committed(mosquitto, clients):
    out = clients(Collector, "out/#", client_id="shrink-collector")
    conn = MQTTConnection(host="127.0.0.1", port=mosquitto.port)
    wide = MQTTSink(conn, client_id="shrink", partitions=4)
    part = wide.build_part("out", "3", None)
    part.write_batch([MQTTMessage("out/x", b"from-3")])
    committed = part.snapshot()
    crash(part)  # killed before the commit tick

    narrow = MQTTSink(conn, client_id="shrink", partitions=2)
    # Bytewax resumes every partition in the store, so "3" must still be listed,
    # but no item is routed beyond the first two any more.
    assert "3" in narrow.list_parts()
    names = sorted(narrow.list_parts())
    assert {names[narrow.part_fn(f"driver-{i}")] for i in range(200)} == {"0", "1"}
    assert {names[narrow.part_fn(k)] for k in narrow.tick_keys()} == {"0", "1"}
    resumed = narrow.build_part("out", "3", committed)
    wait_for(lambda: out.payloads("out/x") == [b"from-3"], 10, "the dropped partition's record")
    resumed.close()


# -- refusals and progress markers (issue 20) ------------------------------------

ACL_CLOSED = """\
user flow
topic readwrite connectors-mqtt/#
topic write out/open/#
user reader
topic read out/#
"""


def drive(part, until, timeout: float, what: str):
    """Call the partition as the dataflow does (a commit tick's batch every 50 ms) until ``until()``."""
    return wait_for(lambda: (part.write_batch([]), time.sleep(0.03), until())[-1], timeout, what)


def test_a_refused_record_waits_in_the_snapshot_and_goes_out_once_the_acl_allows_it(tmp_path, monkeypatch, caplog):
    # The old sink logged the refusal and dropped the record (counted as written).
    monkeypatch.setattr(refusals_module, "RETRY_FIRST", 0.2, raising=False)
    caplog.set_level(logging.INFO, logger="connectors.mqtt")
    acl = tmp_path / "acl"
    acl.write_text(ACL_CLOSED)
    broker = Mosquitto(tmp_path / "broker", users={"flow": "flow-pw", "reader": "reader-pw"}, acl_file=acl).start()
    out = Collector(broker, "out/#", client_id="refusal-collector", username="reader", password="reader-pw")
    written, refused = [], []
    sink = MQTTSink(MQTTConnection(host="127.0.0.1", port=broker.port, username="flow", password="flow-pw"),
                    client_id="refusal", on_written=lambda ms, _s: written.extend(m.payload for m in ms),
                    on_refused=lambda topic, reason: refused.append((topic, reason)))
    closed = [MQTTMessage("out/closed", b"c%d" % i) for i in range(3)]
    opened = [MQTTMessage("out/open", b"o%d" % i) for i in range(3)]
    part = None
    try:
        part = sink.build_part("out", "0", None)
        # mosquitto 2.0.11 (max_queued_messages 0) drops the connection after
        # each refusal: reconnect sooner than the sink's 1 s for a short test.
        part._link.client.reconnect_delay_set(0.1, 0.5)
        publish_committed(part, [opened[0]])
        drive(part, lambda: written == [b"o0"], 10, "o0 accepted")
        publish_committed(part, closed[:2])  # both refused
        drive(part, lambda: part.stats.refused_reason, 10, "the refusal")
        assert part.stats.refused_reason == "the broker refuses to publish on 'out/closed': Not authorized (0x87)"
        publish_committed(part, [opened[1]])  # behind the refusal: it waits
        drive(part, lambda: len(refused) >= 4, 10, "a retry, refused")
        assert out.payloads("out/open") == [b"o0"] and out.payloads("out/closed") == []
        assert written == [b"o0"], "only what the broker accepted counts as written"
        assert {r for _t, r in refused} == {"Not authorized (0x87)"}
        state = part.snapshot()
        assert [m.payload for _seq, m in state.records] == [b"c0", b"c1", b"o1"], "in the snapshot, in order"
        # Killed while refused: the marker after c0 and c1 claimed them until
        # the refusal corrected it; the resumed partition skips neither.
        crash(part)
        part = sink.build_part("out", "0", state)  # hands c0, c1, o1 to the broker, not knowing of the refusal
        part._link.client.reconnect_delay_set(0.1, 0.5)
        drive(part, lambda: part._refusals.current is not None, 10, "the refusal again")
        publish_committed(part, [opened[2], closed[2]])  # behind the refusal: they wait
        drive(part, lambda: len(refused) >= 8, 15, "retries, refused")
        assert out.payloads("out/closed") == [] and b"o2" not in out.payloads("out/open")
        acl.write_text(ACL_CLOSED.replace("out/open/#", "out/#"))  # the operator fixes the ACL
        broker.reload()
        drive(part, lambda: len(out.payloads("out/closed")) >= 3 and b"o2" in out.payloads("out/open"), 15,
              "every record after the fix")
        part.close()
        time.sleep(0.3)
        assert out.payloads("out/closed") == [b"c0", b"c1", b"c2"], "each refused record once, in order"
        # mosquitto 2.0.11 (max_queued_messages 0) also drops the connection
        # after a refusal, so an accepted record whose PUBACK was lost with it
        # may come twice (QoS 1); none is lost, and none overtakes another.
        assert list(dict.fromkeys(out.payloads("out/open"))) == [b"o0", b"o1", b"o2"]
        assert set(written) == {b"o0", b"o1", b"o2", b"c0", b"c1", b"c2"}
        assert part.stats.refused_reason == ""
    finally:
        if part is not None:
            part._link.stop()
        out.close()
        broker.stop()
    errors = [r for r in caplog.records if "refused to publish on 'out/closed'" in r.getMessage()]
    assert len(errors) == 2 and all(r.levelno == logging.ERROR for r in errors), "once per partition, at once"
    assert any("accepted the refused record" in r.getMessage() for r in caplog.records)


RUN = "0123456789ab"
FORGED = [
    json.dumps({"run": RUN, "seq": 10**12}).encode(),
    b'{"run": "%s", "seq": 1e400}' % RUN.encode(),
    b'{"run": "%s", "seq": -1e400}' % RUN.encode(),
    b'{"run": "%s", "seq": NaN}' % RUN.encode(),
    json.dumps({"run": RUN, "seq": True}).encode(),
    json.dumps({"run": RUN, "seq": 3}).encode(),  # the next record's number: never published
    json.dumps({"run": "another-run", "seq": 1}).encode(),
    b"\xff\xfe\x00 not a marker",
    b"[" * 200,
    b'{"run": "%s", "seq": %s}' % (RUN.encode(), b"9" * 5000),
]


def retain(client: paho.Client, topic: str, payload: bytes) -> None:
    client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)


def resumed_state(prefix: bytes) -> sink_module.SinkState:
    """A committed snapshot of run RUN holding three records, #0 to #2."""
    return sink_module.SinkState(RUN, 3, [(i, MQTTMessage("out/x", prefix + b"%d" % i)) for i in range(3)])


def test_a_forged_progress_marker_skips_nothing_and_crashes_nothing(mosquitto, clients, caplog):
    # The old sink trusted any seq of its run (10**12 skipped everything) and
    # raised OverflowError on 1e400, on every restart.
    caplog.set_level(logging.INFO, logger="connectors.mqtt")
    pub = clients(Publisher, client_id="forger")
    sink = MQTTSink(MQTTConnection(host="127.0.0.1", port=mosquitto.port), client_id="forged")
    topic = "connectors-mqtt/progress/forged-out-0"
    for n, forged in enumerate(FORGED):
        written = []
        sink.on_written = lambda ms, _s, written=written: written.extend(m.payload for m in ms)
        retain(pub.client, topic, forged)
        caplog.clear()
        part = sink.build_part("out", "0", resumed_state(b"f%d-" % n))
        part.close()
        assert sorted(written) == [b"f%d-%d" % (n, i) for i in range(3)], forged[:60]
        (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert warning.getMessage().startswith(f"mqtt output #0: ignoring the progress marker on {topic!r}")


@pytest.mark.parametrize(("payload", "done"), [
    (b"", -1),
    (json.dumps({"run": RUN, "seq": -1}).encode(), -1),
    (json.dumps({"run": RUN, "seq": 2}).encode(), 2),
])
def test_a_progress_marker_of_the_partitions_own_records_is_trusted(payload, done):
    assert progress_module.read_progress(payload, RUN, 3) == progress_module.Progress(done)


def test_every_forged_marker_is_ignored_with_a_reason():
    for forged in FORGED + [b"x" * 100_000, b'{"run": 1, "seq": 1}', b'{"run": "%s"}' % RUN.encode()]:
        progress = progress_module.read_progress(forged, RUN, 3)
        assert progress.done == -1 and progress.ignored, forged[:60]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
marker_contents = st.one_of(
    st.binary(max_size=300),
    st.integers(257, 100_000).map(lambda n: b"{" * n),
    json_values.map(lambda v: json.dumps(v).encode()),
    # This run's, with a seq it never reached, or not an integer.
    st.one_of(st.integers().filter(lambda n: not -1 <= n < 6), st.floats(), st.booleans(), st.text(max_size=5))
    .map(lambda seq: json.dumps({"run": RUN, "seq": seq}).encode()),
    st.sampled_from([b"1e400", b"-1e400", b"NaN", b"Infinity", b"9" * 400])
    .map(lambda seq: b'{"run": "%s", "seq": %s}' % (RUN.encode(), seq)),
    st.text(max_size=20).map(lambda run: json.dumps({"run": run, "seq": 1}).encode()),
)


@settings(max_examples=25, deadline=None, derandomize=True,  # the suite sees the same examples every run
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(at_start=marker_contents, while_running=marker_contents)
def test_random_content_on_the_progress_topic_never_skips_loses_or_crashes(mosquitto, at_start, while_running):
    """Whatever lies on the marker topic when a partition starts, or lands there while it runs."""
    written = []
    sink = MQTTSink(MQTTConnection(host="127.0.0.1", port=mosquitto.port), client_id="fuzzed",
                    on_written=lambda ms, _s: written.extend(m.payload for m in ms))
    topic = "connectors-mqtt/progress/fuzzed-out-0"
    writer = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="marker-fuzzer")
    writer.connect("127.0.0.1", mosquitto.port)
    writer.loop_start()
    try:
        retain(writer, topic, at_start)
        part = sink.build_part("out", "0", resumed_state(b"s"))  # a starting partition: #0..#2 pending
        part.write_batch([MQTTMessage("out/x", b"s3")])  # a running one: #3 arrives
        drive(part, lambda: not part._outbox, 5, "#0..#2 and their marker acknowledged")
        retain(writer, topic, while_running)
        state = part.snapshot()  # #3 sealed; killed before its commit
        crash(part)
        again = sink.build_part("out", "0", state)
        again.write_batch([MQTTMessage("out/x", b"s4"), MQTTMessage("out/x", b"s5")])
        again.close()
    finally:
        writer.disconnect()
        writer.loop_stop()
    assert set(written) == {b"s%d" % i for i in range(6)}, "nothing skipped or lost"
