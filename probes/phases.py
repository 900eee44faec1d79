"""Phase maps: which named phase each layer belongs to (SPEC §4).

A phase map is an ordered ``{name: [layers]}`` that covers every layer exactly once.
Built in: the research notebook's maps for Qwen3-32B (64 layers) and Qwen3-4B (36 layers);
any other depth by fraction of depth L/num_layers:
A < 0.11 ≤ B < 0.15 ≤ C < 0.5 ≤ D < 0.75 ≤ E < 0.92 ≤ tail.
"""

from __future__ import annotations

from pathlib import Path

from .errors import StrataError

PHASE_ORDER = ("A", "B", "C", "D", "E", "tail")

# name -> (first, last) inclusive, per depth
BUILTIN = {
    64: {"A": (0, 6), "B": (7, 9), "C": (10, 31), "D": (32, 46), "E": (47, 58), "tail": (59, 63)},
    36: {"A": (0, 6), "B": (7, 9), "C": (10, 23), "D": (24, 33), "tail": (34, 35)},
}
FRACTION_BOUNDS = (("A", 0.11), ("B", 0.15), ("C", 0.5), ("D", 0.75), ("E", 0.92), ("tail", float("inf")))

PhaseMap = dict  # str -> list[int]


def default_phases(num_layers: int) -> PhaseMap:
    """The built-in map for this depth (notebook maps for 36 and 64 layers, else by fraction)."""
    if num_layers in BUILTIN:
        return {name: list(range(a, b + 1)) for name, (a, b) in BUILTIN[num_layers].items()}
    out: PhaseMap = {}
    for layer in range(num_layers):
        frac = layer / num_layers
        name = next(n for n, bound in FRACTION_BOUNDS if frac < bound)
        out.setdefault(name, []).append(layer)
    return out


def parse_phases(text: str, num_layers: int) -> PhaseMap:
    """Parse ``"A:0-6,B:7-9,C:10-23"`` (or a path to a file holding that text, commas or newlines
    between entries) and check that it covers layers 0..num_layers-1 exactly once."""
    src = text
    p = Path(text)
    if ":" not in text or (p.suffix and p.is_file()):
        if not p.is_file():
            raise StrataError(f"--phases {text!r}: expected 'A:0-6,B:7-9,...' or an existing file")
        src = p.read_text()
    out: PhaseMap = {}
    for raw in src.replace("\n", ",").split(","):
        item = raw.strip()
        if not item or item.startswith("#"):
            continue
        name, sep, rng = item.partition(":")
        name, rng = name.strip(), rng.strip()
        try:
            if not sep or not name:
                raise ValueError
            if "-" in rng:
                a, b = (int(x) for x in rng.split("-", 1))
            else:
                a = b = int(rng)
            if a > b or a < 0:
                raise ValueError
        except ValueError:
            raise StrataError(f"--phases: cannot read {item!r}; write entries as NAME:FIRST-LAST, "
                              f"e.g. 'A:0-6,B:7-9'") from None
        out.setdefault(name, []).extend(range(a, b + 1))
    check_cover(out, num_layers)
    return out


def check_cover(phases: PhaseMap, num_layers: int) -> None:
    seen: dict[int, str] = {}
    for name, layers in phases.items():
        for layer in layers:
            if layer >= num_layers:
                raise StrataError(f"--phases: phase {name} names layer {layer} but the model has "
                                  f"{num_layers} layers (0-{num_layers - 1})")
            if layer in seen:
                raise StrataError(f"--phases: layer {layer} is in both {seen[layer]} and {name}; "
                                  f"each layer must be in exactly one phase")
            seen[layer] = name
    missing = [layer for layer in range(num_layers) if layer not in seen]
    if missing:
        raise StrataError(f"--phases: layers {_ranges(missing)} are in no phase; the map must "
                          f"cover 0-{num_layers - 1} exactly once")


def phase_of(phases: PhaseMap) -> dict[int, str]:
    return {layer: name for name, layers in phases.items() for layer in layers}


def adjacent_pairs(phases: PhaseMap, phase: str) -> list[int]:
    """First layers L of the adjacent pairs (L, L+1) with both layers in ``phase``."""
    members = set(phases.get(phase, ()))
    return [layer for layer in sorted(members) if layer + 1 in members]


def _ranges(xs: list[int]) -> str:
    parts, start, prev = [], xs[0], xs[0]
    for x in xs[1:] + [None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        if x is not None:
            start = prev = x
    return ",".join(parts)
