"""The operator tools behind ``driver-stats``: one module per subcommand.

Each module has ``add_parser(subparsers)`` (its options, with help) and
``run(args) -> int``; :mod:`driver_stats.cli` wires them together. The
generation logic (:mod:`.traffic`) is plain Python, usable without a broker.
"""
