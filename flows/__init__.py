"""The Bytewax dataflow (:mod:`.driver_stats`), its steps with their metrics, and the live process."""
