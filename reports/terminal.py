"""The claims × models matrix for the terminal summary: plain ASCII, every line at most
``width`` columns. Models are headed by their names (shortened, full specs in the legend) and
verdicts by letters;
cells shrink (full counts → supported/total → state letter) and, when even that does not fit,
the models are split over several blocks.
"""

from __future__ import annotations

import textwrap

from . import summary as S

TWIN = "!"   # ASCII flags (terminal widths of ⚠/† vary)
HOLM = "*"
GAP = 2


def _flags(c: S.Cell) -> str:
    out = ""
    if c.twin_artifacts:
        out += f" {TWIN}{c.twin_artifacts}"
    if c.not_holm:
        out += f" {HOLM}{c.not_holm}"
    return out


def cell_variants(c: S.Cell) -> list[str]:
    """Cell texts from most to least detailed."""
    if c.total == 0:
        return ["not run", "-"]
    st = S.ABBREV[c.state]
    full = f"{st} {S.cell_counts_text(c)}{_flags(c)}"
    short = f"{st} {c.counts['SUPPORTED']}/{c.total}{_flags(c)}"
    flags = ("!" if c.twin_artifacts else "") + ("*" if c.not_holm else "")
    tiny = f"{st} {c.counts['SUPPORTED']}/{c.total}{flags}"
    return [full, short, tiny, st + flags]


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: max(n - 1, 0)] + "~"


def pack(entries: list[str], width: int, sep: str = "   ") -> list[str]:
    """Entries side by side, never split across lines (an entry longer than the width is clipped)."""
    lines, cur = [], ""
    for entry in entries:
        entry = _clip(entry, width)
        if cur and len(cur) + len(sep) + len(entry) > width:
            lines.append(cur)
            cur = entry
        else:
            cur = f"{cur}{sep}{entry}" if cur else entry
    if cur:
        lines.append(cur)
    return lines


def header_names(models: list[str], width: int) -> dict:
    """Column headers: the models' short names, at most a quarter of the width (≥ 12)."""
    return S.short_names(models, max_len=max(12, min(28, width // 4 + 3)), ellipsis="~")


def render_matrix(doc: dict, width: int = 100) -> str:
    claims = [c.id for c in S.claims(doc)]
    models = S.models(doc)
    if not claims:
        return "no verdicts recorded"
    cells = S.cells(doc)
    abbr = header_names(models, width)
    claim_w = min(max(len("claim"), *(len(c) for c in claims)), max(width // 3, 12))
    variants = {k: cell_variants(c) for k, c in cells.items()}
    pooled = pooled_column(doc, claims)
    if pooled:  # the pooled verdict over the models: one more column, after the models
        models = [*models, S.ALL_MODELS]
        abbr[S.ALL_MODELS] = POOLED_HEADER
        variants.update({(c, S.ALL_MODELS): v for c, v in pooled.items()})

    def col_width(level: int, m: str) -> int:
        return max(len(abbr[m]), *(len(variants[(c, m)][min(level, len(variants[(c, m)]) - 1)])
                                   for c in claims))

    # choose the most detailed level at which all models fit; else split models into blocks
    avail = width - claim_w
    level, blocks = None, None
    for lv in range(4):
        if sum(GAP + col_width(lv, m) for m in models) <= avail:
            level, blocks = lv, [models]
            break
    if level is None:  # split the models over blocks, each column as detailed as it fits
        level = next((lv for lv in range(4)
                      if all(GAP + col_width(lv, m) <= avail for m in models)), 3)
        blocks, cur, used = [], [], 0
        for m in models:
            w = GAP + col_width(level, m)
            if cur and used + w > avail:
                blocks.append(cur)
                cur, used = [], 0
            cur.append(m)
            used += w
        blocks.append(cur)

    lines = []
    for block in blocks:
        widths = {m: col_width(level, m) for m in block}
        head = "claim".ljust(claim_w) + "".join(" " * GAP + abbr[m].ljust(widths[m]) for m in block)
        lines.append(head.rstrip())
        lines.append("-" * min(len(head.rstrip()), width))
        for c in claims:
            row = _clip(c, claim_w).ljust(claim_w)
            for m in block:
                v = variants[(c, m)]
                row += " " * GAP + v[min(level, len(v) - 1)].ljust(widths[m])
            lines.append(row.rstrip()[:width])
        lines.append("")
    lines += pack([f"{abbr[m]} = {m}" for m in models
                   if m != S.ALL_MODELS and abbr[m] != m], width)
    key = ("cell: state (S supported, R refuted, I inconclusive, N n/a, E error, M mixed) then counts "
           "per verdict" if level == 0 else
           "cell: state (S supported, R refuted, I inconclusive, N n/a, E error, M mixed) then "
           "supported/records")
    key += f"; {TWIN}n: supported on the model and on its random-init twin (artifact?); {HOLM}n: support not surviving Holm"
    lines += textwrap.wrap(key, width=width, break_on_hyphens=False)
    if pooled:
        lines += textwrap.wrap(POOLED_KEY, width=width, break_on_hyphens=False)
    return "\n".join(line[:width] for line in lines)


POOLED_HEADER = "all"
POOLED_KEY = (f"{POOLED_HEADER}: pooled over >= 3 models (random effects): G general, "
              f"H heterogeneous, A absent, I inconclusive, M mixed (README: how to read a pooled "
              f"verdict), then counts per pooled record; {TWIN}n: its random-init twins pool to "
              f"support too (artifact?)")


def pooled_column(doc: dict, claims: list[str]) -> dict:
    """{claim: cell texts, most to least detailed} for the "all models" column ({} when the
    report has no pooled record)."""
    cells = S.pooled_cells(doc)
    if not cells:
        return {}
    out = {}
    for c in claims:
        pc = cells.get(c)
        if pc is None:
            out[c] = ["< 3 models", "-"]
            continue
        st = S.POOLED_ABBREV[pc.state]
        flag = f" {TWIN}{pc.twin_artifacts}" if pc.twin_artifacts else ""
        out[c] = [f"{st} {pc.counts_text()}{flag}", f"{st} {pc.counts['GENERAL']}/{pc.total}{flag}",
                  f"{st} {pc.counts['GENERAL']}/{pc.total}{TWIN if pc.twin_artifacts else ''}",
                  st + (TWIN if pc.twin_artifacts else "")]
    return out


# -- the lines under the matrix: counts, refuted records, errors ------------------------------
def counts_line(doc: dict) -> str:
    """'9 supported, 61 refuted, 29 inconclusive, 20 n/a · twins: 3 of 119 supported (!2)':
    the claims' own records by verdict, the random-init twins' apart (they are controls)."""
    own = S.totals(doc)
    parts = [f"{own[v]} {v.lower()}" for v in S.VERDICTS if own[v] or v != "ERROR"]
    text = ", ".join(parts)
    twins = doc.get("twin_records") or []
    if twins:
        supported = sum(t["verdict"] == "SUPPORTED" for t in twins)
        artifacts = sum(S.twin_artifact(r) for r in doc["records"])
        text += f" · twins: {supported} of {len(twins)} supported"
        if artifacts:
            text += f" ({TWIN}{artifacts} where the model is supported too: artifact?)"
    return text


def _where(rec: dict, names: dict) -> str:
    at = "/".join(str(rec[k]) for k in ("phase", "family") if rec.get(k) is not None)
    return f"{rec['claim']} · {names.get(rec['model'], rec['model'])}" + (f" · {at}" if at else "")


def refuted_lines(doc: dict, width: int = 100) -> list[str]:
    """One entry per REFUTED record: where, effect (oriented: the claim's direction positive),
    its interval, p, the null and the reason — no traceback (a refutation is a finding, not a
    crash). An entry longer than the width wraps, indented."""
    models = S.models(doc)
    names = header_names(models, width)
    out = []
    for rec in doc["records"]:
        if rec["verdict"] != "REFUTED":
            continue
        null = rec.get("null") or {}
        line = (f"{_where(rec, names)}: effect {S.fmt_signed(rec.get('effect'))} "
                f"{S.fmt_ci(rec.get('ci'))}, p {S.fmt_p(rec.get('p'))}, null {S.fmt_null(null)}"
                f" — {rec.get('reason') or ''}")
        out += textwrap.wrap(line, width=width, subsequent_indent="    ", break_on_hyphens=False)
    return out


def error_lines(doc: dict, width: int = 100) -> list[str]:
    """One line per record whose probe raised: where, and the one-line cause."""
    names = header_names(S.models(doc), width)
    return [_clip(f"{_where(rec, names)}: {rec.get('reason') or ''}", width)
            for rec in [*doc["records"], *(doc.get("twin_records") or [])]
            if rec["verdict"] == "ERROR"]
