"""The file `waxctl dataflow deploy` ships: it names the dataflow in the image.

Bytewax's Helm chart puts this file into a ConfigMap, copies it to
/var/bytewax/ and runs ``python -m bytewax.run
/var/bytewax/driver_stats_dataflow.py`` from the image's /venv. All code comes
from there (``docker build --target waxctl``), so the ConfigMap never holds
code of another version than the image.

Why not ship ``flows/driver_stats.py`` itself: ``bytewax.run`` imports a file
as a top-level module named after it, and a module ``driver_stats`` hides the
installed ``driver_stats`` package (tests/deploy/test_waxctl.py shows the failure).
"""

# Built on this import, from the DRIVER_STATS_* settings (the broker is checked first).
from flows.driver_stats import flow  # noqa: F401
