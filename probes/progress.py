"""Progress of long work (a streamed pass, a forward pass, hashing, conversion) on the terminal.

One function, :func:`progress`, returns a ``tqdm`` bar (what it is doing, how far, the rate and
an estimate of the time left). It shows only after :data:`DELAY_S` seconds, so short work prints
nothing, and only when the session's output is a terminal, so CI logs stay clean.

Where it writes:

* ``STRATA_PROGRESS=tty`` — set by the pytest plugin in the controller when its stderr is a
  terminal, and inherited by pytest-xdist workers: bars go straight to ``/dev/tty``, so they show
  under ``-q``, under output capture and from ``-n 2`` workers (each bar names its worker).
* ``STRATA_PROGRESS=0`` — never (the plugin sets this when the output is not a terminal).
* unset (a notebook or script) — ``sys.stderr`` when it is a terminal, else nothing.
"""

from __future__ import annotations

import os
import sys

ENV = "STRATA_PROGRESS"
DELAY_S = 2.0

_tty = None


def _stream():
    global _tty
    mode = os.environ.get(ENV, "")
    if mode == "0":
        return None
    if mode == "tty":
        if _tty is None:
            try:
                _tty = open("/dev/tty", "w", buffering=1)
            except OSError:
                _tty = False
        return _tty or None
    err = sys.stderr
    return err if err is not None and hasattr(err, "isatty") and err.isatty() else None


def enabled() -> bool:
    """Whether a bar started now would be shown (after its delay)."""
    return _stream() is not None


def progress(total: float | None, desc: str, unit: str = "it", unit_scale: bool = False):
    """A progress bar for ``total`` units of work described by ``desc``; use it as a context
    manager and call ``update(n)`` as work is done. Disabled (free) when nothing would show."""
    from tqdm import tqdm
    stream = _stream()
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    label = f"[{worker}] {desc}" if worker else desc
    return tqdm(total=total, desc=label, unit=unit, unit_scale=unit_scale, file=stream,
                disable=stream is None, delay=DELAY_S, mininterval=0.5, leave=False,
                dynamic_ncols=True)


def configure_for_pytest(is_controller: bool, output_is_tty: bool) -> None:
    """Called by the plugin: the controller decides once for the session and its workers."""
    if is_controller:
        os.environ[ENV] = "tty" if output_is_tty else "0"
