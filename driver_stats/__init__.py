"""driver-stats: per-driver interval statistics from MQTT driver events.

Layers, bottom first (``tests/test_layers.py`` checks them): :mod:`.contract`,
:mod:`.settings`, :mod:`.core` (the domain), then the dataflow in the
top-level package ``flows``, then :mod:`.cli` and :mod:`.testing` on top.
"""
