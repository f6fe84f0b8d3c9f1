"""The domain, in plain Python: no Bytewax, MQTT or Prometheus here.

* :mod:`.intake` — a message's bytes become an :class:`~.intake.Accepted`
  event or a :class:`~driver_stats.contract.Rejection` (with :mod:`.validation`);
* :mod:`.windows` — one driver's intervals: event-time clock, dedupe,
  lateness guard, totals;
* :mod:`.shards` — drivers grouped into a bounded number of state keys;
* :mod:`.stream_clock` — the stream's event time (how far the whole input
  has read), which closes the intervals of quiet drivers.

The dataflow (:mod:`flows`) calls these per batch and per driver.
"""
