"""Root conftest: registers Strata's two pytest plugins.

fixtures.plugin  -- options, model/phase/family parametrization, cached probe fixtures
reports.plugin   -- the `verdict` fixture, record collection (xdist-safe) and the report files
pytester         -- pytest's own fixture for the plugins' end-to-end tests
"""

pytest_plugins = ["fixtures.plugin", "reports.plugin", "pytester"]
