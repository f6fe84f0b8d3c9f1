"""connectors.mqtt.process: source and sink partitions in processes of their own, against a private mosquitto."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from connectors.mqtt import MQTTConnection, MQTTSource
from connectors.mqtt.testing import Publisher, process_alive, wait_for

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]


def read(part, n: int, what: str) -> list:
    got: list = []
    wait_for(lambda: got.extend(part.next_batch()) or len(got) >= n, 10, what)
    return got


def test_messages_are_acknowledged_only_after_the_snapshot_that_follows_them(mosquitto):
    conn = MQTTConnection(host="127.0.0.1", port=mosquitto.port)
    src = MQTTSource(conn, ["in/r"], client_id="rdr", own_process=True, max_unacked=100)
    pub = Publisher(mosquitto)
    try:
        part = src.build_part("in", "in-0", None)
        pub.publish("in/r", [b"a", b"b", b"c"])
        assert [m.payload for m in read(part, 3, "3 messages")] == [b"a", b"b", b"c"]
        assert part.stats.connected and part.stats.unacked == 3  # counters come with the replies
        part.snapshot()  # the epoch that read them ends: not yet committed
        part.close()
        again = src.build_part("in", "in-0", None)
        assert [m.payload for m in read(again, 3, "the 3 redelivered")] == [b"a", b"b", b"c"]
        again.snapshot()
        again.snapshot()  # the next epoch ends: the first one's snapshot is committed, acked
        again.next_batch()
        again.close()
        pub.publish("in/r", [b"d"])
        last = src.build_part("in", "in-0", None)
        assert [m.payload for m in read(last, 1, "d")] == [b"d"]
        last.close()
    finally:
        pub.close()
        src.close()


def test_a_worker_killed_takes_its_reader_with_it_and_loses_nothing(mosquitto, tmp_path):
    # The worker's process reads 3 messages, commits nothing, and is killed -9.
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from connectors.mqtt import MQTTConnection, MQTTSource
        src = MQTTSource(MQTTConnection(host="127.0.0.1", port={mosquitto.port}), ["in/k"],
                         client_id="killed", own_process=True)
        part = src.build_part("in", "in-0", None)
        print(part.pid, flush=True)
        got = []
        while len(got) < 3:
            got += part.next_batch()
            time.sleep(0.01)
        print("read", flush=True)
        time.sleep(60)
    """)
    pub = Publisher(mosquitto)
    worker = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        reader_pid = int(worker.stdout.readline())
        pub.publish("in/k", [b"x", b"y", b"z"])
        assert worker.stdout.readline().strip() == "read"
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        wait_for(lambda: not process_alive(reader_pid), 10, "the reader process to exit")
        src = MQTTSource(MQTTConnection(host="127.0.0.1", port=mosquitto.port), ["in/k"],
                         client_id="killed", own_process=True)
        part = src.build_part("in", "in-0", None)
        assert [m.payload for m in read(part, 3, "the 3 redelivered")] == [b"x", b"y", b"z"]
        part.close()
        src.close()
    finally:
        worker.kill()
        pub.close()

