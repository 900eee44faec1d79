"""Root conftest: registers Strata's two pytest plugins.

fixtures.plugin  -- options, model/phase/family parametrization, cached probe fixtures
reports.plugin   -- the `verdict` fixture, record collection (xdist-safe) and the report files
pytester         -- pytest's own fixture for the plugins' end-to-end tests
"""

import sys

from probes import cluster as _cluster

# Under `--cluster` on the command line the workers start now, while pytest imports the plugins
# below (torch, the probes), not at session start: ≈ 2 s sooner ready (probes.cluster.start_early;
# the session takes the engine, or closes it if its parsed options ask for none).
_cluster.start_early(sys.argv[1:], warm="fixtures.cluster:warm_worker")

pytest_plugins = ["fixtures.plugin", "reports.plugin", "pytester"]
