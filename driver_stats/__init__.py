"""driver-stats: per-driver interval statistics from MQTT driver events.

Layers, bottom first (``tests/test_layers.py`` checks them): :mod:`.contract`,
:mod:`.settings`, :mod:`.core` (the domain), :mod:`.traffic` (generated
input traffic), then the top-level packages ``flows`` (the dataflow) and
``cli`` (the ``driver-stats`` command), and :mod:`.testing` on top. Nothing
in this package imports ``flows`` or ``cli``. The tree, its rules and the
conventions: CONTRIBUTING.md; what the product does: README.md and docs/.
"""
