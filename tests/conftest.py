"""Hooks for the harness's own tests."""

import functools


@functools.lru_cache(maxsize=1)
def _import_before_inline_runs() -> None:
    # pytester drops the modules an in-process run imported when the run ends; torch registers
    # operator libraries once per process (torch.distributed._functional_collectives, which
    # transformers' model modules import), so a second import in a later run fails ("Only a
    # single TORCH_LIBRARY can be used…"). Imported here, before any run's snapshot of
    # sys.modules, they are kept — whatever order xdist gives the tests.
    import torch.distributed._functional_collectives  # noqa: F401
    from probes.models import open_model
    open_model("synthetic:tiny-llama").describe()


def pytest_runtest_setup(item):
    # before the test's fixtures: pytester takes its snapshot when it is set up
    if "pytester" in getattr(item, "fixturenames", ()):
        _import_before_inline_runs()
