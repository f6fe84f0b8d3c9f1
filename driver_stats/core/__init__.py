"""The domain, in plain Python: no Bytewax, MQTT or Prometheus here.

* :mod:`.intake` — a message's bytes become an :class:`~.intake.Accepted`
  event or a :class:`~driver_stats.contract.Rejection` (with :mod:`.validation`);
* :mod:`.windows` — one driver's intervals: event-time clock, dedupe,
  lateness guard, totals;
* :mod:`.stream_clock` — wall-clock time that stands still while the input
  is cut off.

The dataflow (:mod:`flows`) calls these per batch and per driver.
"""
