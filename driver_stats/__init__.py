"""driver-stats: per-driver interval statistics from MQTT driver events.

Layers, bottom first (``tests/test_layers.py`` checks them): :mod:`.contract`,
:mod:`.settings`, :mod:`.core` (the domain), then the dataflow in the
top-level package ``flows``, then the ``driver-stats`` command in the
top-level package ``cli`` and :mod:`.testing` on top. :mod:`.traffic`, the
traffic model, is plain Python on the contract. The tree, its rules and the
conventions: CONTRIBUTING.md; what the product does: README.md and docs/.
"""
