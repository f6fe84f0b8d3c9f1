"""``python -m driver_stats.cli``: the ``driver-stats`` command."""

import sys

from . import main

sys.exit(main())
