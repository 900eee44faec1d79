"""Small inline-SVG plots for the HTML report: a profile across depth with phase bands and the
null, an L×L heatmap with phase boundaries, records' effects across training checkpoints, and a
forest plot of one claim's effects pooled over models. No ids, no external references, every
text escaped — each plot is an independent ``<svg>`` element that can be pasted anywhere.
"""

from __future__ import annotations

import math
from html import escape
from typing import Sequence

from .summary import is_num, phase_ranges

VIRIDIS = ("#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779",
           "#6ece58", "#b5de2b", "#fde725")
RDBU = ("#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7", "#fddbc7", "#f4a582",
        "#d6604d", "#b2182b")
LEVELS = 48  # colour levels of a heatmap (cells are grouped into one path per level)

BAND_FILLS = ("#eef1f6", "#f8f9fb")
HIGHLIGHT_FILL = "#ffe8a8"
LINE = "#1f5fbf"
NULL_LINE = "#6b6b6b"
NULL_BAND = "#9a9a9a"
AXIS = "#555"
FONT = "font-family:system-ui,-apple-system,'Segoe UI',sans-serif"


# -- scales and ticks ----------------------------------------------------------------------
def nice_ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    """Round tick values covering [lo, hi] (steps 1, 2, 2.5 or 5 × 10^k)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        ticks.append(0.0 if abs(t) < step * 1e-9 else t)
        t += step
    return ticks


def tick_label(t: float) -> str:
    if t == 0:
        return "0"
    if abs(t) >= 1e4 or abs(t) < 1e-3:
        return f"{t:.0e}"
    return f"{t:.4g}"


def layer_ticks(first: int, last: int, count: int = 6) -> list[int]:
    span = max(last - first, 1)
    step = next(s for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 500) if span / s <= count)
    start = math.ceil(first / step) * step
    return list(range(start, last + 1, step))


def _padded_range(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if is_num(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    if hi == lo:
        pad = abs(hi) * 0.1 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.08
    return lo - pad, hi + pad


def _segments(xs, *series) -> list[list[tuple]]:
    """Split a polyline (or band: several y series) into runs where every value is present:
    tuples (x, y1, y2, ...)."""
    segs, cur = [], []
    for x, *ys in zip(xs, *series):
        if all(is_num(y) for y in ys):
            cur.append((x, *ys))
        elif cur:
            segs.append(cur)
            cur = []
    if cur:
        segs.append(cur)
    return segs


def _pts(points) -> str:
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in points)


# -- profile -------------------------------------------------------------------------------
def profile_svg(layers: Sequence[int], values: Sequence[float | None], *,
                null: Sequence[float | None] | None = None,
                null_lo: Sequence[float | None] | None = None,
                null_hi: Sequence[float | None] | None = None,
                phases: dict | None = None, highlight: str | Sequence[str] | None = None,
                width: int = 300, height: int = 150, title: str = "", ylabel: str = "",
                css_class: str = "profile") -> str:
    """A line of ``values`` over ``layers`` (per layer, or per adjacent pair by first layer)
    with the phases shaded (the ``highlight`` phase or phases drawn stronger), the per-layer null as a dashed
    line and, where ``null_lo``/``null_hi`` are given, the null band between them."""
    marked = {highlight} if isinstance(highlight, str) else set(highlight or ())
    left, right, top, bottom = 46, 8, 16, 24
    pw, ph = width - left - right, height - top - bottom
    layers = [int(x) for x in layers]
    phases = phases or {}
    pr = phase_ranges(phases)
    x_first = min(layers + [a for _, a, _ in pr]) if layers or pr else 0
    x_last = max(layers + [b for _, _, b in pr]) if layers or pr else 1
    x0, x1 = x_first - 0.5, x_last + 0.5

    def sx(x):
        return left + (x - x0) / (x1 - x0) * pw

    all_y = list(values) + list(null or []) + list(null_lo or []) + list(null_hi or [])
    y0, y1 = _padded_range(all_y)

    def sy(y):
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    out = [f'<svg class="{escape(css_class)}" '
           f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
           f'style="{FONT}">']
    if title:
        out.append(f"<title>{escape(title)}</title>")
    # phase bands
    for i, (name, a, b) in enumerate(pr):
        xa, xb = sx(a - 0.5), sx(b + 0.5)
        fill = HIGHLIGHT_FILL if name in marked else BAND_FILLS[i % 2]
        out.append(f'<rect x="{xa:.1f}" y="{top}" width="{xb - xa:.1f}" height="{ph}" fill="{fill}"/>')
        if xb - xa >= 6 * len(name) + 2:
            weight = "700" if name in marked else "400"
            out.append(f'<text x="{(xa + xb) / 2:.1f}" y="{top - 4}" font-size="9" '
                       f'font-weight="{weight}" text-anchor="middle" fill="#444">{escape(name)}</text>')
    # axes and grid
    for t in nice_ticks(y0, y1, 4):
        y = sy(t)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#fff" stroke-width="1"/>')
        out.append(f'<text x="{left - 4}" y="{y + 3:.1f}" font-size="9" text-anchor="end" '
                   f'fill="{AXIS}">{escape(tick_label(t))}</text>')
    for t in layer_ticks(x_first, x_last):
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top + ph}" y2="{top + ph + 3}" stroke="{AXIS}"/>')
        out.append(f'<text x="{x:.1f}" y="{top + ph + 13}" font-size="9" text-anchor="middle" '
                   f'fill="{AXIS}">{t}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#bbb"/>')
    out.append(f'<text x="{left + pw}" y="{height - 2}" font-size="9" text-anchor="end" '
               f'fill="{AXIS}">layer</text>')
    if ylabel:
        out.append(f'<text x="{left}" y="{height - 2}" font-size="9" fill="{AXIS}">'
                   f'{escape(_clip(ylabel, 40))}</text>')
    # null band and line
    if null_lo is not None and null_hi is not None:
        for seg in _segments(layers, null_lo, null_hi):
            upper = [(sx(x), sy(h)) for x, _, h in seg]
            lower = [(sx(x), sy(lo)) for x, lo, _ in reversed(seg)]
            out.append(f'<polygon class="null-band" points="{_pts(upper + lower)}" '
                       f'fill="{NULL_BAND}" fill-opacity="0.28" stroke="none"/>')
    if null is not None:
        for seg in _segments(layers, null):
            pts = [(sx(x), sy(y)) for x, y in seg]
            if len(pts) == 1:
                x, y = pts[0]
                pts = [(x - 2, y), (x + 2, y)]
            out.append(f'<polyline class="null-line" points="{_pts(pts)}" fill="none" '
                       f'stroke="{NULL_LINE}" stroke-width="1.2" stroke-dasharray="4 3"/>')
    # the profile
    for seg in _segments(layers, values):
        pts = [(sx(x), sy(y)) for x, y in seg]
        if len(pts) > 1:
            out.append(f'<polyline points="{_pts(pts)}" fill="none" stroke="{LINE}" stroke-width="1.6"/>')
        if len(layers) <= 80:
            out.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="1.7" fill="{LINE}"/>' for x, y in pts)
    out.append("</svg>")
    return "".join(out)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


# -- colours -------------------------------------------------------------------------------
def _hex_to_rgb(h: str) -> tuple[int, int, int]:
    return int(h[1:3], 16), int(h[3:5], 16), int(h[5:7], 16)


def interpolate(stops: Sequence[str], t: float) -> str:
    """Colour at t ∈ [0, 1] along evenly spaced ``stops`` (linear in RGB)."""
    t = min(max(t, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(t), len(stops) - 2)
    f = t - i
    a, b = _hex_to_rgb(stops[i]), _hex_to_rgb(stops[i + 1])
    return "#%02x%02x%02x" % tuple(round(x + (y - x) * f) for x, y in zip(a, b))


def constant_diagonal(values: Sequence[Sequence[float | None]]) -> bool:
    """True for a self-similarity matrix whose diagonal is one repeated value (cos(L, L) = 1):
    such a diagonal carries no information and would swamp the colour range."""
    n = len(values)
    if n < 3 or any(len(row) != n for row in values):
        return False
    diag = [values[i][i] for i in range(n)]
    return all(is_num(d) for d in diag) and max(diag) - min(diag) <= 1e-9 * max(1.0, abs(diag[0]))


def colour_scale(values: Sequence[Sequence[float | None]], skip_diagonal: bool = False
                 ) -> tuple[float, float, tuple]:
    """(vmin, vmax, stops): diverging and symmetric about 0 when the values change sign,
    sequential (viridis) otherwise; the diagonal left out of the range if ``skip_diagonal``."""
    finite = [v for i, row in enumerate(values) for j, v in enumerate(row)
              if is_num(v) and not (skip_diagonal and i == j)]
    if not finite:
        return 0.0, 1.0, VIRIDIS
    lo, hi = min(finite), max(finite)
    if lo < 0 < hi:
        m = max(-lo, hi)
        return -m, m, RDBU
    if hi == lo:
        return lo - 0.5, hi + 0.5, VIRIDIS
    return lo, hi, VIRIDIS


# -- heatmap -------------------------------------------------------------------------------
def heatmap_svg(layers: Sequence[int], values: Sequence[Sequence[float | None]], *,
                phases: dict | None = None, size: int = 250, title: str = "", label: str = "",
                css_class: str = "heatmap") -> str:
    """An L×L heatmap: row i, column j = values[i][j] for layers[i], layers[j]; phase
    boundaries drawn as lines, a colour bar with its range at the right. Cells are quantised
    to ``LEVELS`` colours and drawn as one path per colour (small and crisp). A constant
    diagonal (a self-similarity's cos(L, L) = 1) is drawn grey and left out of the colour range,
    so the off-diagonal structure gets the whole scale."""
    layers = [int(x) for x in layers]
    n = len(layers)
    left, top, bar = 34, 16, 68
    plot = size - left - 20
    width, height = left + plot + bar, top + plot + 24
    skip = constant_diagonal(values)
    vmin, vmax, stops = colour_scale(values, skip_diagonal=skip)
    cs = plot / max(n, 1)
    paths: dict[int, list[str]] = {}
    missing: list[str] = []
    diagonal: list[str] = []
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            if skip and i == j:
                diagonal.append(f"M{j} {i}h1v1h-1z")
            elif is_num(v):
                lvl = min(int((v - vmin) / (vmax - vmin) * LEVELS), LEVELS - 1)
                paths.setdefault(max(lvl, 0), []).append(f"M{j} {i}h1v1h-1z")
            else:
                missing.append(f"M{j} {i}h1v1h-1z")
    out = [f'<svg class="{escape(css_class)}" '
           f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
           f'style="{FONT}">']
    if title:
        out.append(f"<title>{escape(title)}</title>")
    out.append(f'<g transform="translate({left} {top}) scale({cs:.4f})" shape-rendering="crispEdges">')
    for lvl in sorted(paths):
        colour = interpolate(stops, (lvl + 0.5) / LEVELS)
        out.append(f'<path fill="{colour}" d="{"".join(paths[lvl])}"/>')
    if missing:
        out.append(f'<path fill="#d9d9d9" d="{"".join(missing)}"/>')
    if diagonal:
        out.append(f'<path class="diagonal" fill="#a0a0a0" d="{"".join(diagonal)}"/>')
    out.append("</g>")
    # phase boundaries (in index space: a boundary sits where the phase of layers[k] changes)
    index = {layer: k for k, layer in enumerate(layers)}
    for name, a, b in phase_ranges(phases or {}):
        if a not in index:
            continue
        k0 = index[a]
        k1 = index.get(b, k0) + 1
        if k0 > 0:
            p = k0 * cs
            out.append(f'<line x1="{left}" x2="{left + plot}" y1="{top + p:.1f}" y2="{top + p:.1f}" '
                       f'stroke="#fff" stroke-width="1"/>')
            out.append(f'<line y1="{top}" y2="{top + plot}" x1="{left + p:.1f}" x2="{left + p:.1f}" '
                       f'stroke="#fff" stroke-width="1"/>')
        mid = (k0 + k1) / 2 * cs
        if (k1 - k0) * cs >= 6 * len(name) + 2:
            out.append(f'<text x="{left + mid:.1f}" y="{top - 4}" font-size="9" text-anchor="middle" '
                       f'fill="#444">{escape(name)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{plot}" height="{plot}" fill="none" stroke="#999"/>')
    # layer ticks on the left and bottom
    if layers:
        for t in layer_ticks(layers[0], layers[-1], 5):
            if t not in index:
                continue
            c = (index[t] + 0.5) * cs
            out.append(f'<text x="{left - 3}" y="{top + c + 3:.1f}" font-size="9" text-anchor="end" '
                       f'fill="{AXIS}">{t}</text>')
            out.append(f'<text x="{left + c:.1f}" y="{top + plot + 11}" font-size="9" '
                       f'text-anchor="middle" fill="{AXIS}">{t}</text>')
    # colour bar
    bx, bw, steps = left + plot + 8, 10, 24
    for s in range(steps):
        y = top + plot - (s + 1) * plot / steps
        out.append(f'<rect x="{bx}" y="{y:.1f}" width="{bw}" height="{plot / steps + 0.6:.1f}" '
                   f'fill="{interpolate(stops, (s + 0.5) / steps)}"/>')
    out.append(f'<text x="{bx + bw + 2}" y="{top + 8}" font-size="9" fill="{AXIS}">{escape(f"{vmax:.3g}")}</text>')
    out.append(f'<text x="{bx + bw + 2}" y="{top + plot}" font-size="9" fill="{AXIS}">{escape(f"{vmin:.3g}")}</text>')
    if skip:
        out.append(f'<text x="{left + plot}" y="{height - 1}" font-size="9" text-anchor="end" '
                   f'fill="{AXIS}">diagonal ({escape(tick_label(values[0][0]))}) in grey, '
                   f'not in the scale</text>')
    elif label:
        out.append(f'<text x="{left}" y="{height - 1}" font-size="9" fill="{AXIS}">'
                   f'{escape(_clip(label, 48))}</text>')
    out.append("</svg>")
    return "".join(out)


# -- forest plot (pooled over models) --------------------------------------------------------
REGION_FILL = "#e3f3e8"   # where an effect shows the claim
MIN_LINE = "#b83227"
DIAMOND = "#1d2330"
PI_LINE = "#7a4fb5"


def _region_spans(direction: str, m: float, x0: float, x1: float) -> list[tuple[float, float]]:
    """The claim's supported region clipped to [x0, x1]: [m, ∞) for greater/less, |x| ≥ m for
    two-sided, (−m, m) for equivalent."""
    if direction in ("greater", "less"):
        spans = [(m, x1)]
    elif direction == "two-sided":
        spans = [(x0, -m), (m, x1)]
    elif direction == "equivalent":
        spans = [(-m, m)]
    else:
        spans = []
    return [(max(a, x0), min(b, x1)) for a, b in spans if min(b, x1) > max(a, x0)]


def forest_svg(rows: Sequence[dict], effect: float, ci: Sequence[float],
               prediction: Sequence[float], *, direction: str = "greater",
               min_effect: float = 0.0, width: int = 620, title: str = "",
               pooled_label: str = "pooled", css_class: str = "forest") -> str:
    """A forest plot: one row per model (``rows``: ``label``, optional ``short`` label to show,
    ``effect``, ``lo``, ``hi``; a square at the effect, a whisker over its interval), then the pooled estimate as a diamond
    over its interval and the prediction interval as a bar below it; the null (0) as a grey
    line, the minimum effect(s) as dashed red lines, and the claim's supported region shaded.
    A prediction interval far wider than the rest is clipped at the plot's edge, with an arrow."""
    row_h, top, bottom = 17, 18, 26
    label_w, num_w = 190, 170
    plot_w = width - label_w - num_w
    n = len(rows)
    height = top + (n + 2) * row_h + 10 + bottom
    core = [0.0, effect, *ci]
    for r in rows:
        core += [v for v in (r.get("effect"), r.get("lo"), r.get("hi")) if is_num(v)]
    marks = [min_effect] if direction in ("greater", "less") else [-min_effect, min_effect]
    core += [v for v in marks if is_num(v)]
    lo_c, hi_c = min(core), max(core)
    span = (hi_c - lo_c) or 1.0
    # the prediction interval shows in full unless it would squash the rest below a third
    x0 = max(min(lo_c, prediction[0]), lo_c - span)
    x1 = min(max(hi_c, prediction[1]), hi_c + span)
    pad = (x1 - x0) * 0.04
    x0, x1 = x0 - pad, x1 + pad

    def sx(x):
        return label_w + (min(max(x, x0), x1) - x0) / (x1 - x0) * plot_w

    def fy(i):  # centre of row i
        return top + i * row_h + row_h / 2

    out = [f'<svg class="{escape(css_class)}" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" role="img" style="{FONT}">']
    if title:
        out.append(f"<title>{escape(title)}</title>")
    plot_bottom = top + (n + 2) * row_h + 4
    for a, b in _region_spans(direction, min_effect, x0, x1):
        out.append(f'<rect class="region" x="{sx(a):.1f}" y="{top - 4}" width="{sx(b) - sx(a):.1f}" '
                   f'height="{plot_bottom - top + 4}" fill="{REGION_FILL}"/>')
    for t in nice_ticks(x0, x1, 5):
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{plot_bottom}" y2="{plot_bottom + 3}" stroke="{AXIS}"/>')
        out.append(f'<text x="{x:.1f}" y="{plot_bottom + 13}" font-size="9" text-anchor="middle" '
                   f'fill="{AXIS}">{escape(tick_label(t))}</text>')
    out.append(f'<line x1="{label_w}" x2="{label_w + plot_w}" y1="{plot_bottom}" y2="{plot_bottom}" stroke="#bbb"/>')
    if x0 <= 0 <= x1:
        out.append(f'<line class="null" x1="{sx(0):.1f}" x2="{sx(0):.1f}" y1="{top - 4}" '
                   f'y2="{plot_bottom}" stroke="{NULL_LINE}" stroke-width="1"/>')
    for v in marks:
        if is_num(v) and x0 <= v <= x1 and v != 0:
            out.append(f'<line class="min-effect" x1="{sx(v):.1f}" x2="{sx(v):.1f}" y1="{top - 4}" '
                       f'y2="{plot_bottom}" stroke="{MIN_LINE}" stroke-width="1" stroke-dasharray="4 3"/>')
    out.append(f'<text x="{label_w + plot_w}" y="{height - 2}" font-size="9" text-anchor="end" '
               f'fill="{AXIS}">effect (null 0; dashed: minimum effect; shaded: the claim holds)</text>')
    # models
    for i, r in enumerate(rows):
        y = fy(i)
        full = str(r.get("label", ""))
        shown = clip_middle(str(r.get("short") or full), 32)
        out.append(f'<text x="{label_w - 6}" y="{y + 3:.1f}" font-size="10" text-anchor="end" '
                   f'fill="#1d2330"><title>{escape(full)}</title>{escape(shown)}</text>')
        e, lo, hi = r.get("effect"), r.get("lo"), r.get("hi")
        if is_num(lo) and is_num(hi):
            out.append(f'<line class="model-ci" x1="{sx(lo):.1f}" x2="{sx(hi):.1f}" y1="{y:.1f}" '
                       f'y2="{y:.1f}" stroke="{LINE}" stroke-width="1.4"/>')
        if is_num(e):
            out.append(f'<rect class="model-effect" x="{sx(e) - 3:.1f}" y="{y - 3:.1f}" width="6" '
                       f'height="6" fill="{LINE}"/>')
        out.append(f'<text x="{width - num_w + 12}" y="{y + 3:.1f}" font-size="9.5" fill="{AXIS}">'
                   f'{escape(_interval_text(e, lo, hi))}</text>')
    # pooled diamond and prediction interval
    y = fy(n) + 2
    out.append(f'<line x1="{label_w - 160}" x2="{width - 4}" y1="{y - row_h / 2:.1f}" '
               f'y2="{y - row_h / 2:.1f}" stroke="#dde1e7"/>')
    out.append(f'<text x="{label_w - 6}" y="{y + 3:.1f}" font-size="10" font-weight="700" '
               f'text-anchor="end" fill="{DIAMOND}">{escape(_clip(pooled_label, 30))}</text>')
    pts = [(sx(ci[0]), y), (sx(effect), y - 5.5), (sx(ci[1]), y), (sx(effect), y + 5.5)]
    out.append(f'<polygon class="pooled" points="{_pts(pts)}" fill="{DIAMOND}"/>')
    out.append(f'<text x="{width - num_w + 12}" y="{y + 3:.1f}" font-size="9.5" font-weight="700" '
               f'fill="{DIAMOND}">{escape(_interval_text(effect, *ci))}</text>')
    y = fy(n + 1) + 2
    out.append(f'<text x="{label_w - 6}" y="{y + 3:.1f}" font-size="10" text-anchor="end" '
               f'fill="{PI_LINE}">prediction interval</text>')
    a, b = sx(prediction[0]), sx(prediction[1])
    out.append(f'<line class="prediction" x1="{a:.1f}" x2="{b:.1f}" y1="{y:.1f}" y2="{y:.1f}" '
               f'stroke="{PI_LINE}" stroke-width="2.2"/>')
    for end, clipped, sign in ((a, prediction[0] < x0, -1), (b, prediction[1] > x1, 1)):
        if clipped:
            out.append(f'<polygon class="clipped" points="{_pts([(end + sign * 6, y), (end, y - 4), (end, y + 4)])}" '
                       f'fill="{PI_LINE}"/>')
        else:
            out.append(f'<line x1="{end:.1f}" x2="{end:.1f}" y1="{y - 4:.1f}" y2="{y + 4:.1f}" '
                       f'stroke="{PI_LINE}" stroke-width="1.6"/>')
    out.append(f'<text x="{width - num_w + 12}" y="{y + 3:.1f}" font-size="9.5" fill="{PI_LINE}">'
               f'{escape(_interval_text(None, *prediction))}</text>')
    out.append("</svg>")
    return "".join(out)


def clip_middle(text: str, n: int) -> str:
    """``text`` cut to ``n`` characters in the middle (model specs differ at their ends)."""
    if len(text) <= n:
        return text
    head = (n - 1) // 2
    return text[:head] + "…" + text[len(text) - (n - 1 - head):]


def _interval_text(e, lo, hi) -> str:
    def f(x):
        if not is_num(x):
            return "—"
        return f"{x:+.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:+.1e}"
    inner = f"[{f(lo)}, {f(hi)}]"
    return inner if e is None else f"{f(e)} {inner}"


# -- across checkpoints --------------------------------------------------------------------
SERIES_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                  "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#ad494a", "#637939")


def checkpoint_svg(labels: Sequence[str], lines: Sequence[dict], *,
                   min_effect: float | None = None, direction: str | None = None,
                   width: int = 360, height: int = 190, title: str = "",
                   css_class: str = "checkpoints") -> str:
    """Each record's effect against checkpoint order: x = the checkpoints ``labels`` (evenly
    spaced, in order), one polyline per entry of ``lines`` ({"name", "values": effect per
    checkpoint (None: a gap), "colour", "point_colours": per checkpoint, e.g. its verdict's}),
    a point per present value (``data-line`` and ``data-checkpoint`` name it). The null (effect
    0) is a solid grey line, the claim's minimum effect dashed (both signs for two-sided and
    equivalence claims)."""
    left, right, top, bottom = 46, 10, 10, 30
    pw, ph = width - left - right, height - top - bottom
    n = max(len(labels), 1)

    def sx(i):
        return left + (i + 0.5) / n * pw

    marks = [0.0]
    if is_num(min_effect):
        marks.append(float(min_effect))   # effects are oriented: the claimed direction is +
        if direction in ("two-sided", "equivalent"):
            marks.append(-float(min_effect))
    y0, y1 = _padded_range([v for line in lines for v in line["values"]] + marks)

    def sy(y):
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    out = [f'<svg class="{escape(css_class)}" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" role="img" style="{FONT}">']
    if title:
        out.append(f"<title>{escape(title)}</title>")
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafbfc" stroke="#bbb"/>')
    for t in nice_ticks(y0, y1, 4):
        out.append(f'<text x="{left - 4}" y="{sy(t) + 3:.1f}" font-size="9" text-anchor="end" '
                   f'fill="{AXIS}">{escape(tick_label(t))}</text>')
    out.append(f'<line class="null-line" x1="{left}" x2="{left + pw}" y1="{sy(0):.1f}" '
               f'y2="{sy(0):.1f}" stroke="{NULL_LINE}" stroke-width="1"/>')
    out.append(f'<text x="{left + pw - 2}" y="{sy(0) - 2:.1f}" font-size="8" text-anchor="end" '
               f'fill="{NULL_LINE}">null</text>')
    for m in marks[1:]:
        out.append(f'<line class="min-effect" x1="{left}" x2="{left + pw}" y1="{sy(m):.1f}" '
                   f'y2="{sy(m):.1f}" stroke="{NULL_LINE}" stroke-width="1" stroke-dasharray="4 3"/>')
    step = max(1, math.ceil(len(labels) * 42 / pw))     # ≥ 42 px per label
    for i, label in enumerate(labels):
        if i % step == 0 or i == len(labels) - 1:
            out.append(f'<text x="{sx(i):.1f}" y="{top + ph + 12}" font-size="9" '
                       f'text-anchor="middle" fill="{AXIS}">{escape(_clip(label, 10))}</text>')
    out.append(f'<text x="{left + pw}" y="{height - 2}" font-size="9" text-anchor="end" '
               f'fill="{AXIS}">checkpoint →</text>')
    out.append(f'<text x="{left}" y="{height - 2}" font-size="9" fill="{AXIS}">effect</text>')
    for line in lines:
        colour = line.get("colour", LINE)
        xs = list(range(len(line["values"])))
        for seg in _segments(xs, line["values"]):
            if len(seg) > 1:
                out.append(f'<polyline points="{_pts((sx(i), sy(v)) for i, v in seg)}" '
                           f'fill="none" stroke="{colour}" stroke-width="1.4"/>')
        fills = line.get("point_colours") or [colour] * len(xs)
        for i, v in zip(xs, line["values"]):
            if not is_num(v):
                continue
            tip = f"{line['name']} @ {labels[i]}: effect {v:+.4g}"
            out.append(f'<circle class="pt" data-line="{escape(line["name"])}" '
                       f'data-checkpoint="{i}" cx="{sx(i):.1f}" cy="{sy(v):.1f}" r="3" '
                       f'fill="{fills[i]}" stroke="{colour}" stroke-width="1.2">'
                       f'<title>{escape(tip)}</title></circle>')
    out.append("</svg>")
    return "".join(out)
