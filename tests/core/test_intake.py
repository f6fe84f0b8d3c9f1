"""driver_stats.core.intake: what an accepted event carries along the flow."""

import pickle

from connectors.mqtt import MQTTMessage
from driver_stats.core.intake import Accepted, Intake
from driver_stats.settings import Settings
from tests.support import T0, rated, wire


def test_an_accepted_event_crosses_processes_as_itself_with_the_partition_that_read_it():
    # Bytewax pickles what goes to a worker in another process; the window
    # step there counts the event against the partition that read it.
    topic, payload = wire(rated("d1", "j1", 5, 4))
    [accepted] = Intake(Settings(), clock=lambda: T0.timestamp()).batch([MQTTMessage(topic, payload, (), 3)])
    assert isinstance(accepted, Accepted) and accepted.partition == 3
    assert pickle.loads(pickle.dumps(accepted)) == accepted
    [plain] = Intake(Settings(), clock=lambda: T0.timestamp()).batch([MQTTMessage(topic, payload)])
    assert plain.partition == 0  # a message of no partition (tests, replay)
