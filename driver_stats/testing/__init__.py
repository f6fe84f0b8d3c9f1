"""Running the real flow against a private broker, for the tests and the benchmarks.

* :mod:`.live_flow` — :class:`~.live_flow.LiveFlow` runs ``python -m bytewax.run
  flows.driver_stats`` as subprocesses; :func:`~.live_flow.expected_stats`
  says what it must publish for a set of events, :func:`~.live_flow.published_stats`
  reads what it did;
* :mod:`.paced` — traffic published on the wall clock, with its ground truth.

The broker and the MQTT clients are :mod:`connectors.mqtt.testing`'s.
"""
