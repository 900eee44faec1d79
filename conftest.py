"""Root conftest: registers Strata's two pytest plugins.

fixtures.plugin  -- options, model/phase/family parametrization, cached probe fixtures
reports.plugin   -- the `verdict` fixture, record collection (xdist-safe) and the report files
pytester         -- pytest's own fixture for the plugins' end-to-end tests

and drops hypothesis's pytest plugin from runs that collect no hypothesis test (a claims run).
"""

import sys

from probes import cluster as _cluster

# Under `--cluster` on the command line the workers start now, while pytest imports the plugins
# below (torch, the probes), not at session start: ≈ 2 s sooner ready (probes.cluster.start_early;
# the session takes the engine, or closes it if its parsed options ask for none).
_cluster.start_early(sys.argv[1:], warm="fixtures.cluster:warm_worker")

pytest_plugins = ["fixtures.plugin", "reports.plugin", "pytester"]


def pytest_collection_finish(session):
    # hypothesis's pytest plugin imports the whole of hypothesis (≈ 1.4 s) in its terminal
    # summary whether or not a test used it; a claims run (`pytest hypotheses/`) has none, so
    # the plugin is dropped there. Kept where no test was collected (the xdist controller: its
    # workers' hypothesis tests report through it).
    items = session.items
    if items and not any(getattr(getattr(i, "obj", None), "is_hypothesis_test", False)
                         for i in items):
        plugin = session.config.pluginmanager.get_plugin("hypothesispytest")
        if plugin is not None:
            session.config.pluginmanager.unregister(plugin)
