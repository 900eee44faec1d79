"""Zoo files: a list of model specs under version control (``--models FILE``).

One spec per line, as ``--model`` takes it. ``#`` starts a comment (at the start of a line or
after whitespace, so a spec holding ``#`` needs none before it); blank lines are skipped. A spec
starting with ``./`` or ``../`` is a path relative to the zoo file's folder (so a zoo and its
checkpoints can move together); ``~`` is expanded when the model is opened; anything else (a
hub id ``org/name``, ``org/name@REV``, ``synthetic:...``) is taken as written.
"""

from __future__ import annotations

import re
from pathlib import Path

from probes.errors import StrataError

_COMMENT = re.compile(r"(^|\s)#.*$")


def read_zoo(path: str | Path) -> list[str]:
    """The specs of a zoo file, in order, duplicates dropped."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StrataError(f"--models {path}: no such file; give a text file with one model "
                          f"spec per line") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StrataError(f"--models {path}: cannot read it ({exc})") from None
    specs = []
    for line in text.splitlines():
        spec = _COMMENT.sub("", line).strip()
        if not spec:
            continue
        if spec.startswith(("./", "../")):
            spec = str((p.parent / spec).resolve())
        if spec not in specs:
            specs.append(spec)
    if not specs:
        raise StrataError(f"--models {path}: no model spec in it (one spec per line, "
                          f"'#' comments)")
    return specs
