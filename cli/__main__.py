"""``python -m cli``: the ``driver-stats`` command."""

import sys

from . import main

sys.exit(main())
