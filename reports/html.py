"""``verdicts.html``: one self-contained page (inline CSS, inline SVG, a few lines of inline
script; no external references) that answers "which claims hold on which models, how
strongly, against what null", and lets the reader dig into each verdict's profile.

Layout: the claims × models matrix (cells coloured by verdict, linking to their detail);
per claim its statement, statistic and null, then per model a phase × family overview grid,
the table of records, one profile plot per record (phase bands, the record's phase
highlighted, the null dashed) and the L×L heatmaps; run metadata at the end.
Every string that comes from a record is HTML-escaped.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from html import escape
from pathlib import Path

from . import checkpoints as CK
from . import summary as S
from .svg import SERIES_COLOURS, checkpoint_svg, forest_svg, heatmap_svg, profile_svg

COLOURS = {  # (background, strong)
    "SUPPORTED": ("#d5efdd", "#23884b"),
    "REFUTED": ("#f8d5d1", "#b83227"),
    "INCONCLUSIVE": ("#fbedc4", "#b7860b"),
    "N/A": ("#eceef1", "#8a9099"),
    "MIXED": ("#ffffff", "#555555"),
    "ERROR": ("#3a3f4b", "#ffd7d2"),
}
POOLED_COLOURS = {  # pooled verdicts over models (background, strong)
    "GENERAL": ("#c9ecd4", "#1b7a41"),
    "HETEROGENEOUS": ("#d9e8f8", "#2c5f9e"),
    "ABSENT": ("#f8d5d1", "#b83227"),
    "INCONCLUSIVE": ("#fbedc4", "#b7860b"),
    "MIXED": ("#ffffff", "#555555"),
    "N/A": ("#eceef1", "#8a9099"),
}
# the table "how far to trust each claim" (README), as benchmarks/calibration.py --json wrote it:
# the page shows the rows of its claims and links each claim to its row
TRUST_JSON = Path(__file__).resolve().parent.parent / "benchmarks" / "calibration.json"
OPEN_TABLE_MAX = 16  # a claim × model's record table starts open up to this many rows
OPEN_PLOTS_MAX = 8   # ... and its profile plots

CSS = """
*{box-sizing:border-box}
body{font:13px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1d2330;margin:0;background:#f6f7f9}
main{max-width:1320px;margin:0 auto;padding:18px 24px 60px}
h1{font-size:22px;margin:0 0 2px}
h2{font-size:17px;margin:0 0 6px}
h3{font-size:14px;margin:16px 0 6px}
a{color:#1f5fbf;text-decoration:none}
a:hover{text-decoration:underline}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
.sub{color:#5b6270;margin:0 0 10px}
.card{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:14px 16px;margin:14px 0}
.chips span{display:inline-block;border-radius:10px;padding:1px 9px;margin:0 6px 4px 0;font-weight:600;font-size:12px}
.legend{color:#4a5160;font-size:12px;margin:6px 0 10px}
.legend .sw{display:inline-block;width:11px;height:11px;border-radius:2px;vertical-align:-1px;margin:0 3px 0 10px;border:1px solid #0002}
table{border-collapse:collapse}
table.matrix{width:100%;table-layout:fixed}
table.matrix.few{width:auto;table-layout:auto}
table.matrix.few th.claim{width:460px}
table.matrix.few td.cell{width:320px}
table.matrix th,table.matrix td{border:1px solid #dde1e7;padding:6px 8px;vertical-align:top}
table.matrix thead th{background:#f0f2f5;text-align:left;font-size:12px}
table.matrix th.claim{width:34%;min-width:320px;max-width:560px;text-align:left;font-weight:400}
table.matrix th.claim a{font-weight:650}
table.matrix .stmt{color:#5b6270;font-size:12px;margin-top:2px}
td.cell{padding:0}
td.cell a{display:block;padding:6px 8px;color:inherit;text-decoration:none;height:100%}
td.cell a:hover{outline:2px solid #1f5fbf;outline-offset:-2px}
.state{font-weight:700;font-size:12px;letter-spacing:.02em}
.counts{font-size:12px;color:#333}
.bar{display:flex;height:6px;border-radius:3px;overflow:hidden;margin:4px 0 2px;background:#eee}
.bar span{display:block;height:100%}
.flag{display:inline-block;font-size:11px;font-weight:600;border-radius:3px;padding:0 4px;margin:2px 4px 0 0}
.flag.twin{background:#ffe1b3;color:#8a4b00;border:1px solid #e7a64a}
.flag.holm{background:#eef0ff;color:#3b3f99;border:1px solid #b9bdf0}
.flag.notwin{background:#f1f1f1;color:#777;border:1px solid #ddd}
.claimhead dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:6px 0 0}
.claimhead dt{color:#5b6270}
.claimhead dd{margin:0}
.cm{border-top:1px solid #e4e7ec;margin-top:12px;padding-top:4px}
.cm h3 .model{font-family:ui-monospace,Menlo,Consolas,monospace}
.cm .line{color:#4a5160;margin:0 0 6px}
table.overview{margin:4px 0 8px}
table.overview th{font-weight:600;font-size:11px;color:#4a5160;padding:2px 6px;text-align:center}
table.overview th.row{text-align:right}
table.overview td{padding:0;border:2px solid #fff}
table.overview td a{display:block;min-width:58px;padding:2px 5px;text-align:center;font-size:11px;color:#1d2330;border-radius:3px}
table.overview td.empty{background:#fafafa}
details{margin:6px 0}
summary{cursor:pointer;color:#2b3445;font-weight:600;font-size:12.5px}
table.records{width:100%;font-size:12px;margin-top:4px}
table.records th,table.records td{border-bottom:1px solid #e7e9ee;padding:3px 6px;text-align:right;white-space:nowrap}
table.records th{background:#f3f4f7;position:sticky;top:0;font-weight:600;white-space:normal}
table.records td.t,table.records th.t{text-align:left}
table.records td.twin{white-space:normal}
table.records td.reason{white-space:normal;text-align:left;color:#5b6270;font-size:11.5px;min-width:160px}
table.records tr:target{outline:2px solid #1f5fbf}
td.v{font-weight:650}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:10px;margin-top:6px}
figure{margin:0;background:#fff;border:1px solid #e1e4ea;border-left-width:4px;border-radius:4px;padding:4px 6px}
figcaption{font-size:11.5px;color:#2b3445;margin-bottom:2px}
figcaption .num{color:#5b6270}
.hgrid{display:flex;flex-wrap:wrap;gap:12px;margin-top:6px}
figure svg.profile{width:100%;height:auto;display:block}
figure svg.heatmap{max-width:100%;height:auto;display:block}
table.meta td,table.meta th{border-bottom:1px solid #e7e9ee;padding:3px 10px 3px 0;text-align:left;vertical-align:top}
table.meta th{color:#5b6270;font-weight:500}
.twinv{font-size:11.5px}
.ylab{color:#5b6270;font-size:11px}
.na{color:#5b6270;font-size:12px;margin:0 0 6px}
.na ul{margin:0;padding-left:18px}
table.records .kind{white-space:normal;max-width:220px;margin-left:auto;color:#5b6270;font-size:11px}
details.extra{margin:1px 0 0}
details.extra summary{font-weight:500;font-size:11px;color:#6b7280}
details.extra dl{display:grid;grid-template-columns:max-content 1fr;gap:0 8px;margin:2px 0}
details.extra dt{color:#6b7280}
details.extra dd{white-space:normal;overflow-wrap:anywhere;margin:0;color:#1d2330;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11px}
.lsw{display:inline-block;width:12px;height:3px;vertical-align:2px;margin:0 3px 0 8px}
figure svg.checkpoints{width:100%;height:auto;display:block}
.fgrid{display:grid;grid-template-columns:repeat(auto-fill,minmax(620px,1fr));gap:10px;margin-top:6px}
figure svg.forest{width:100%;max-width:760px;height:auto;display:block}
table.matrix th.pooled{background:#e9eef7}
table.trust{table-layout:fixed}
table.trust th,table.trust td{white-space:normal;overflow-wrap:anywhere;text-align:left;vertical-align:top}
table.trust col.claim{width:13%}table.trust col.null{width:14%}table.trust col.min_effect{width:27%}
table.trust col.fp_iid,table.trust col.fp_shuffled{width:12%}table.trust col.power{width:15%}
table.trust col.power_0_8{width:7%}
.card{overflow-x:auto}
@media (max-width:1250px){main{padding:12px 10px 40px}.card{padding:10px 10px}
table.records{font-size:11px}table.records th,table.records td{padding:3px 3px}}
"""

SCRIPT = """
function strataOpen(){var id=decodeURIComponent(location.hash.slice(1));if(!id)return;
var el=document.getElementById(id);var t=el;while(el){if(el.tagName==='DETAILS')el.open=true;el=el.parentElement;}
if(t)t.scrollIntoView();}
window.addEventListener('hashchange',strataOpen);strataOpen();
"""


def e(x) -> str:
    return escape("" if x is None else str(x), quote=True)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-").lower() or "x"


class Anchors:
    """Unique, readable element ids."""

    def __init__(self):
        self.used: set[str] = set()

    def make(self, *parts: str) -> str:
        base = "--".join(slug(p) for p in parts)
        out, k = base, 2
        while out in self.used:
            out, k = f"{base}-{k}", k + 1
        self.used.add(out)
        return out


def render_html(doc: dict) -> str:
    claims = S.claims(doc)
    models = S.models(doc)
    cells = S.cells(doc)
    ids = Anchors()
    claim_ids = {c.id: ids.make("claim", c.id) for c in claims}
    cell_ids = {(c.id, m): ids.make(c.id, m) for c in claims for m in models}
    pooled_ids = {c.id: ids.make(c.id, "pooled") for c in claims}

    run = doc.get("run", {})
    title = "Strata verdicts — " + ", ".join(models) if models else "Strata verdicts"
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width,initial-scale=1">',
             f"<title>{e(title)}</title><style>{CSS}</style></head><body><main>"]
    parts.append(_header(doc, models))
    parts.append(_matrix(claims, models, cells, claim_ids, cell_ids,
                         pooled=(S.pooled_cells(doc), pooled_ids) if S.pooled(doc) else None))
    parts.append(_checkpoint_sections(doc, claims, claim_ids))
    trust = trust_rows()
    parts.append(_trust_section(claims, trust))
    for c in claims:
        parts.append(_claim_section(doc, c, models, cells, claim_ids[c.id], cell_ids, ids, trust,
                                    pooled_anchor=pooled_ids[c.id]))
    parts.append(_run_section(run, models))
    parts.append(f"</main><script>{SCRIPT}</script></body></html>")
    return "\n".join(parts)


# -- header and matrix ---------------------------------------------------------------------
def _header(doc: dict, models: list[str]) -> str:
    run = doc.get("run", {})
    tot = S.totals(doc)
    n_art = sum(S.twin_artifact(r) for r in doc["records"])
    n_holm = sum(S.not_surviving_holm(r) for r in doc["records"])
    chips = "".join(
        f'<span style="background:{COLOURS[v][0]};color:{COLOURS[v][1]}">{tot[v]} {e(v)}</span>'
        for v in S.VERDICTS if tot[v] or v != "ERROR")
    flags = []
    if n_art:
        flags.append(f'<span class="flag twin">{S.TWIN_FLAG} {n_art} supported records also supported on the random-init twin</span>')
    if n_holm:
        flags.append(f'<span class="flag holm">{S.HOLM_FLAG} {n_holm} supported at α but not after Holm</span>')
    sub = (f"{len(S.claims(doc))} claims × {len(models)} model{'s' if len(models) != 1 else ''} "
           f"({', '.join(e(m) for m in models)}) · {len(doc['records'])} records · "
           f"α = {e(run.get('alpha'))} · started {e(run.get('started'))}")
    return (f'<header><h1>Strata verdict report</h1><p class="sub">{sub}</p>'
            f'<div class="chips">{chips}{"".join(flags)}</div></header>')


def _legend() -> str:
    sw = "".join(f'<span class="sw" style="background:{COLOURS[v][0]};border-color:{COLOURS[v][1]}"></span>{e(v)}'
                 for v in S.STATES)
    return (f'<div class="legend">Cell colour: the verdict all applicable records of the claim '
            f'agree on, MIXED when they differ (the bar shows the shares).{sw}<br>'
            f'<span class="flag twin">{S.TWIN_FLAG}</span> SUPPORTED records also SUPPORTED on the random-init twin '
            f'(likely an artifact) · <span class="flag holm">{S.HOLM_FLAG}</span> support that does '
            f'not survive Holm adjustment over the session · counts: S supported, R refuted, '
            f'I inconclusive, N not applicable, E error (the probe raised).</div>')


def _bar(c: S.Cell) -> str:
    fr = c.fractions()
    segs = "".join(f'<span style="width:{100 * fr[v]:.1f}%;background:{COLOURS[v][1]}" '
                   f'title="{c.counts[v]} {e(v)}"></span>' for v in S.VERDICTS if c.counts[v])
    return f'<div class="bar">{segs}</div>'


def _cell_flags(c: S.Cell) -> str:
    out = []
    if c.twin_artifacts:
        out.append(f'<span class="flag twin" title="SUPPORTED records also SUPPORTED on the random-init twin">'
                   f'{S.TWIN_FLAG} {c.twin_artifacts} twin</span>')
    if c.not_holm:
        out.append(f'<span class="flag holm" title="SUPPORTED records that do not survive Holm">'
                   f'{S.HOLM_FLAG} {c.not_holm} not Holm</span>')
    if c.applicable and not c.twin_checked:
        out.append('<span class="flag notwin" title="no random-init twin evaluated">no twin</span>')
    return "".join(out)


def _matrix(claims, models, cells, claim_ids, cell_ids, pooled=None) -> str:
    """The claims × models matrix; ``pooled`` = (pooled cells, anchors) adds the column
    "all models" (the pooled verdicts over the models)."""
    names = S.short_names(models)
    head = "".join(f'<th title="{e(m)}"><span class="mono">{e(names[m])}</span></th>' for m in models)
    if pooled:
        head += f'<th class="pooled" title="random-effects pooling over the models">{e(S.ALL_MODELS)}</th>'
    rows = []
    for c in claims:
        tds = []
        for m in models:
            cl = cells[(c.id, m)]
            bg, fg = COLOURS[cl.state]
            if cl.total == 0:
                tds.append('<td class="cell empty" data-claim="{}" data-model="{}">'
                           '<span class="counts">not run</span></td>'.format(e(c.id), e(m)))
                continue
            tds.append(
                f'<td class="cell" data-claim="{e(c.id)}" data-model="{e(m)}" '
                f'data-state="{e(cl.state)}" style="background:{bg}">'
                f'<a href="#{cell_ids[(c.id, m)]}"><span class="state" style="color:{fg}">{e(cl.state)}</span> '
                f'<span class="counts">{e(S.cell_counts_text(cl))}</span>{_bar(cl)}{_cell_flags(cl)}</a></td>')
        if pooled:
            tds.append(_pooled_matrix_cell(c.id, pooled[0].get(c.id), pooled[1][c.id]))
        rows.append(f'<tr><th class="claim"><a href="#{claim_ids[c.id]}">{e(c.id)}</a>'
                    f'<div class="stmt">{e(c.statement)}</div></th>{"".join(tds)}</tr>')
    long = [m for m in models if names[m] != m]
    names_legend = ('<div class="legend">Models: ' + " · ".join(
        f'<span class="mono">{e(names[m])}</span> = <span class="mono">{e(m)}</span>' for m in long)
        + '</div>') if long else ""
    return (f'<section class="card" id="matrix"><h2>Claims × models</h2>{_legend()}'
            + (_pooled_legend() if pooled else "") + names_legend +
            f'<table class="matrix{" few" if len(models) <= 2 else ""}"><thead><tr><th class="claim">claim</th>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></section>')


# -- across checkpoints (revisions of one hub model) ----------------------------------------
def _checkpoint_sections(doc, claims, claim_ids) -> str:
    """Per series of revisions (:mod:`reports.checkpoints`): each record's effect against
    checkpoint order, one plot per claim (per phase where its records have phases and
    families: a line per family), the points coloured by that checkpoint's verdict."""
    out = []
    for series in CK.series(doc):
        order = S.record_sort_key(doc)
        blocks = []
        for c in claims:
            keys = [k for k in series.trajectories if k[0] == c.id]
            if not keys:
                continue
            first = {k: next(r for r in series.trajectories[k] if r) for k in keys}
            keys.sort(key=lambda k: order(first[k]))
            per_phase = any(k[2] is not None and k[3] is not None for k in keys)
            groups: dict = {}
            for k in keys:
                groups.setdefault(k[2] if per_phase else None, []).append(k)
            figs = [_checkpoint_figure(series, c, phase, gkeys, per_phase)
                    for phase, gkeys in groups.items()
                    if any(r and r["verdict"] != "N/A" for k in gkeys
                           for r in series.trajectories[k])]
            body = (f'<div class="grid">{"".join(figs)}</div>' if figs else
                    '<p class="na">N/A at every checkpoint.</p>')
            blocks.append(f'<h3><a href="#{claim_ids[c.id]}">{e(c.id)}</a></h3>{body}')
        labels = ", ".join(e(x) for x in series.labels)
        out.append(f'<section class="card" id="{e(slug("checkpoints-" + series.name))}">'
                   f'<h2>Across checkpoints — <span class="mono">{e(series.name)}</span></h2>'
                   f'<p class="sub">{len(series.specs)} revisions in checkpoint order '
                   f'({e(series.order_by)}): {labels}. Each record\'s effect at each checkpoint; '
                   f'a point\'s colour is its verdict there; the grey line is the null '
                   f'(effect 0), dashed the claim\'s minimum effect.</p>{"".join(blocks)}</section>')
    return "".join(out)


def _checkpoint_figure(series, c, phase, keys, per_phase) -> str:
    lines = []
    for j, k in enumerate(keys):
        recs = series.trajectories[k]
        name = " · ".join(str(x) for x in ((k[3],) if per_phase else (k[2], k[3])) if x) or c.id
        lines.append({"name": name, "colour": SERIES_COLOURS[j % len(SERIES_COLOURS)],
                      "values": [r.get("effect") if r and r["verdict"] != "N/A" else None
                                 for r in recs],
                      "point_colours": [COLOURS[r["verdict"]][1] if r else "#ffffff"
                                        for r in recs]})
    where = f"phase {phase}" if phase is not None else c.id
    svg = checkpoint_svg(series.labels, lines, min_effect=c.min_effect, direction=c.direction,
                         title=f"{c.id} on {series.name}: {where}, effect by checkpoint")
    legend = "".join(f'<span class="lsw" style="background:{line["colour"]}"></span>{e(line["name"])}'
                     for line in lines)
    return (f'<figure class="checkpoint"><figcaption><b>{e(where)}</b><br>{legend}</figcaption>'
            f'{svg}</figure>')


# -- how far to trust each claim --------------------------------------------------------------
def trust_rows(path: Path | None = None) -> dict:
    """Claim id → its row of the trust table (``rows`` of the calibration summary); {} if absent."""
    try:
        return json.loads(Path(path or TRUST_JSON).read_text()).get("rows", {})
    except (OSError, ValueError):
        return {}


TRUST_COLUMNS = (("null", "null"), ("min_effect", "minimum effect, and why"),
                 ("fp_iid", "false positives: i.i.d. init"),
                 ("fp_shuffled", "false positives: shuffled real"),
                 ("power", "power at planted strength s"), ("power_0_8", "power ≥ 0.8 from"))


def trust_anchor(claim_id: str) -> str:
    return f"trust-{slug(claim_id)}"


def _trust_section(claims, rows: dict) -> str:
    known = [c for c in claims if c.id in rows]
    if not known:
        return ""
    head = "".join(f"<th>{e(label)}</th>" for _, label in TRUST_COLUMNS)
    # fixed column widths and wrapping: the null and minimum-effect texts are sentences, and
    # unwrapped they pushed the false-positive and power columns off a 1400 px page
    cols = "".join(f'<col class="{k}">' for k, _ in TRUST_COLUMNS)
    body = "".join(f'<tr id="{trust_anchor(c.id)}"><th class="claim">{e(c.id)}</th>'
                   + "".join(f"<td>{e(rows[c.id].get(k, ''))}</td>" for k, _ in TRUST_COLUMNS)
                   + "</tr>" for c in known)
    return (f'<section class="card" id="trust"><h2>How far to trust each claim</h2>'
            f'<p class="note">False-positive rate on structure-free models of the default '
            f'model\'s shapes and power on planted-structure models, measured by '
            f'<code>python -m benchmarks.calibration</code> (the README\'s table).</p>'
            f'<table class="records trust"><colgroup><col class="claim">{cols}</colgroup>'
            f'<thead><tr><th>claim</th>{head}</tr></thead>'
            f'<tbody>{body}</tbody></table></section>')


# -- per claim -----------------------------------------------------------------------------


def _claim_section(doc, c: S.ClaimInfo, models, cells, anchor, cell_ids, ids: Anchors,
                   trust: dict | None = None, pooled_anchor: str | None = None) -> str:
    trust = trust or {}
    head = (f'<div class="claimhead"><h2>{e(c.id)}</h2><dl>'
            f'<dt>statement</dt><dd>{e(c.statement)}</dd>'
            f'<dt>statistic</dt><dd>{e(c.statistic)}</dd>'
            f'<dt>null</dt><dd>{e(c.null)}</dd>'
            f'<dt>supported when</dt><dd>p ≤ α and {e(S.direction_text(c.direction, c.min_effect))}</dd>'
            + (f'<dt>calibration</dt><dd><a href="#{trust_anchor(c.id)}">how far to trust this '
               f'claim</a>: false positives {e(trust[c.id].get("fp_iid"))} (i.i.d. init), '
               f'{e(trust[c.id].get("fp_shuffled"))} (shuffled real); power ≥ 0.8 from '
               f'{e(trust[c.id].get("power_0_8"))}</dd>' if c.id in trust else "")
            + '</dl></div>')
    body = [_pooled_block(doc, c, pooled_anchor, ids)] if S.pooled_for(doc, c.id) else []
    for m in models:
        recs = S.records_for(doc, c.id, m)
        if not recs:
            continue
        body.append(_claim_model(doc, c, m, recs, cells[(c.id, m)], cell_ids[(c.id, m)], ids))
    return f'<section class="card claim" id="{anchor}">{head}{"".join(body)}</section>'


def _claim_model(doc, c, model, recs, cl: S.Cell, anchor, ids: Anchors) -> str:
    phases = S.model_phases(doc, model)
    row_ids = [ids.make(anchor, "r", str(k)) for k in range(len(recs))]
    bg, fg = COLOURS[cl.state]
    line = (f'<p class="line"><span class="state" style="color:{fg}">{e(cl.state)}</span> · '
            f'{e(S.cell_counts_text(cl, " · "))} of {cl.total} records {_cell_flags(cl)}</p>')
    parts = [f'<div class="cm" id="{anchor}"><h3>on <span class="model">{e(model)}</span></h3>{line}']
    na = Counter(r.get("reason") or "no reason given" for r in recs if r["verdict"] == "N/A")
    if na:
        items = "".join(f"<li>{e(reason)}{f' (×{n})' if n > 1 else ''}</li>" for reason, n in na.most_common(4))
        more = f"<li>… and {len(na) - 4} other reasons</li>" if len(na) > 4 else ""
        parts.append(f'<div class="na">Not applicable:<ul>{items}{more}</ul></div>')
    parts.append(_overview(recs, row_ids, phases))
    parts.append(_records_table(recs, row_ids, c))
    with_profile = [(r, rid) for r, rid in zip(recs, row_ids) if r.get("profile")]
    if with_profile:
        figs = "".join(_profile_figure(r, rid, phases) for r, rid in with_profile)
        opened = " open" if len(with_profile) <= OPEN_PLOTS_MAX else ""
        parts.append(f'<details class="plots"{opened}><summary>Profiles across depth '
                     f'({len(with_profile)}) — the record\'s phase highlighted, null dashed'
                     f'</summary><div class="grid">{figs}</div></details>')
    maps = _heatmaps(recs, phases, model)
    if maps:
        parts.append(f'<details class="heatmaps" open><summary>Layer × layer ({maps[0]})</summary>'
                     f'<div class="hgrid">{maps[1]}</div></details>')
    parts.append("</div>")
    return "".join(parts)


def _overview(recs, row_ids, phases) -> str:
    """A phase × family grid of verdict-coloured cells (effect inside), linking to the rows."""
    ph = []
    fam = []
    for r in recs:
        if r.get("phase") not in ph:
            ph.append(r.get("phase"))
        if r.get("family") not in fam:
            fam.append(r.get("family"))
    if len(recs) < 2:
        return ""
    idx = {(r.get("family"), r.get("phase")): (r, rid) for r, rid in zip(recs, row_ids)}
    if ph == [None]:        # no phase parameter: one row across the families
        idx = {(None, f): hit for (f, _), hit in idx.items()}
        ph, fam = fam, [None]
    head = "".join(f"<th>{e(p) if p is not None else '—'}</th>" for p in ph)
    rows = []
    for f in fam:
        tds = []
        for p in ph:
            hit = idx.get((f, p))
            if hit is None:
                tds.append('<td class="empty"></td>')
                continue
            r, rid = hit
            bg, _ = COLOURS[r["verdict"]]
            flag = (S.HOLM_FLAG if S.not_surviving_holm(r) else "") + (S.TWIN_FLAG if S.twin_artifact(r) else "")
            txt = S.fmt_short(r.get("effect")) if r["verdict"] != "N/A" else "N/A"
            tip = f"{r['verdict']}: effect {S.fmt_signed(r.get('effect'))}, p {S.fmt_p(r.get('p'))} — {r.get('reason', '')}"
            tds.append(f'<td><a href="#{rid}" style="background:{bg}" title="{e(tip)}">{e(txt)}{e(flag)}</a></td>')
        label = e(f) if f is not None else "effect"
        rows.append(f'<tr><th class="row">{label}</th>{"".join(tds)}</tr>')
    return (f'<table class="overview"><thead><tr><th></th>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _records_table(recs, row_ids, c: S.ClaimInfo) -> str:
    kinds = {(r.get("null") or {}).get("kind") for r in recs if r["verdict"] != "N/A"}
    show_kind = len(kinds) > 1 or (kinds and next(iter(kinds)) != c.null)
    # a claim without a phase (or family) parameter gets no such column
    keys = [k for k in ("phase", "family") if any(r.get(k) is not None for r in recs)]
    rows = []
    for r, rid in zip(recs, row_ids):
        bg, fg = COLOURS[r["verdict"]]
        null = r.get("null") or {}
        null_txt = e(S.fmt_null(null))
        if show_kind and r["verdict"] != "N/A":
            null_txt += f'<div class="kind">{e(null.get("kind"))}</div>'
        verdict = e(r["verdict"])
        if S.not_surviving_holm(r):
            verdict += f' <span class="flag holm" title="does not survive Holm">{S.HOLM_FLAG} Holm</span>'
        key_cells = "".join(f'<td class="t{" mono" if k == "family" else ""}">{e(r.get(k) or "—")}</td>'
                            for k in keys)
        rows.append(
            f'<tr id="{rid}">{key_cells}'
            f'<td>{e(S.fmt(r.get("observed")))}</td><td>{null_txt}</td>'
            f'<td>{e(S.fmt_signed(r.get("effect")))}</td><td>{e(S.fmt_ci(r.get("ci")))}</td>'
            f'<td>{e(S.fmt_p(r.get("p")))}</td><td>{e(S.fmt_p(r.get("p_holm")))}</td>'
            f'<td class="v t" style="background:{bg};color:{fg}">{verdict}</td>'
            f'<td class="t twin">{_twin_cell(r)}</td><td class="reason">{_reason(r)}</td></tr>')
    opened = " open" if len(recs) <= OPEN_TABLE_MAX else ""
    key_heads = "".join(f'<th class="t">{k}</th>' for k in keys)
    return (f'<details class="table"{opened}><summary>Records ({len(recs)})</summary>'
            f'<table class="records"><thead><tr>{key_heads}'
            f'<th>observed</th><th>null mean ± sd</th><th>effect</th><th>interval</th><th>p</th>'
            f'<th>Holm p</th><th class="t">verdict</th><th class="t">random twin</th>'
            f'<th class="t">reason</th></tr></thead><tbody>{"".join(rows)}</tbody></table></details>')


def _twin_cell(r) -> str:
    t = r.get("twin")
    if not t:
        return '<span class="twinv" style="color:#999">—</span>'
    tip = (f"twin: observed {S.fmt(t.get('observed'))}, effect {S.fmt_signed(t.get('effect'))}, "
           f"p {S.fmt_p(t.get('p'))}" + (f" — {t['reason']}" if t.get("reason") else ""))
    _, fg = COLOURS.get(t.get("verdict"), COLOURS["N/A"])
    text = f'<span class="twinv" style="color:{fg}" title="{e(tip)}">{e(t.get("verdict"))}</span>'
    if S.twin_artifact(r):
        text += f' <span class="flag twin" title="SUPPORTED on the random-init twin: likely an artifact">{S.TWIN_FLAG} artifact?</span>'
    return text


def _reason(r) -> str:
    """The verdict's reason, and the record's ``extra`` numbers folded in a <details>."""
    text = r.get("reason") or ""
    out = e(text if len(text) <= 300 else text[:299] + "…")
    extra = {k: v for k, v in (r.get("extra") or {}).items() if k != "calibration"}
    if extra:
        items = "".join(f"<dt>{e(k)}</dt><dd>{e(_extra_value(v))}</dd>" for k, v in extra.items())
        out += (f'<details class="extra"><summary>extra ({len(extra)})</summary>'
                f'<dl>{items}</dl></details>')
    return out


def _extra_value(v) -> str:
    if isinstance(v, float):
        return S.fmt(v)
    if isinstance(v, (list, tuple)):
        text = ", ".join(S.fmt(x) if isinstance(x, float) else str(x) for x in v[:12])
        return f"[{text}{', …' if len(v) > 12 else ''}] ({len(v)})"
    if isinstance(v, dict):
        text = json.dumps(v, default=str)
        return text if len(text) <= 200 else text[:199] + "…"
    return str(v)


def _profile_band(prof: dict):
    """(lo, hi) lists of the per-layer null band when the profile carries one
    (``null_lo``/``null_hi``, or ``null_sd``: null ± 1.96 sd); else (None, None)."""
    if prof.get("null_lo") is not None and prof.get("null_hi") is not None:
        return prof["null_lo"], prof["null_hi"]
    sd, null = prof.get("null_sd"), prof.get("null")
    if sd is not None and null is not None:
        lo = [m - 1.96 * s if S.is_num(m) and S.is_num(s) else None for m, s in zip(null, sd)]
        hi = [m + 1.96 * s if S.is_num(m) and S.is_num(s) else None for m, s in zip(null, sd)]
        return lo, hi
    return None, None


def _profile_figure(r, rid, phases) -> str:
    prof = r["profile"]
    lo, hi = _profile_band(prof)
    where = " · ".join(x for x in (r.get("phase"), r.get("family")) if x) or r["claim"]
    svg = profile_svg(prof["layers"], prof["values"], null=prof.get("null"), null_lo=lo, null_hi=hi,
                      phases=phases, highlight=r.get("phase") or prof.get("highlight"),
                      title=f"{r['claim']} on {r['model']}: {where}")
    label = prof.get("label") or ""
    _, fg = COLOURS[r["verdict"]]
    flag = (S.HOLM_FLAG if S.not_surviving_holm(r) else "") + (" " + S.TWIN_FLAG if S.twin_artifact(r) else "")
    return (f'<figure style="border-left-color:{fg}"><figcaption><a href="#{rid}"><b>{e(where)}</b></a> '
            f'<span style="color:{fg};font-weight:650">{e(r["verdict"])}{e(flag)}</span> '
            f'<br><span class="num">effect {e(S.fmt_signed(r.get("effect")))} · p {e(S.fmt_p(r.get("p")))}'
            f' · Holm p {e(S.fmt_p(r.get("p_holm")))}</span>'
            + (f'<br><span class="ylab">{e(label)}</span>' if label else "")
            + f'</figcaption>{svg}</figure>')


def _heatmaps(recs, phases, model):
    """Distinct matrices of a claim × model (records sharing one matrix get one heatmap)."""
    groups: dict[str, tuple[dict, list]] = {}
    for r in recs:
        mat = r.get("matrix")
        if not mat:
            continue
        key = json.dumps([mat.get("label"), mat.get("layers"), mat.get("values")])
        groups.setdefault(key, (mat, []))[1].append(r)
    if not groups:
        return None
    figs = []
    for mat, rs in groups.values():
        label = mat.get("label") or "layer × layer"
        fams = [f for f in dict.fromkeys(r.get("family") for r in rs) if f and f not in label]
        cap = label + (f" — {', '.join(fams)}" if fams else "")
        svg = heatmap_svg(mat["layers"], mat["values"], phases=phases,
                          title=f"{rs[0]['claim']} on {model}: {cap}")
        figs.append(f'<figure><figcaption>{e(cap)}</figcaption>{svg}</figure>')
    return len(figs), "".join(figs)


# -- pooled over models ------------------------------------------------------------------------
def _pooled_legend() -> str:
    sw = "".join(f'<span class="sw" style="background:{POOLED_COLOURS[v][0]};border-color:'
                 f'{POOLED_COLOURS[v][1]}"></span><b>{e(v)}</b>: {e(S.POOLED_MEANING[v])}. '
                 for v in S.POOLED_VERDICTS)
    return (f'<div class="legend"><b>{e(S.ALL_MODELS)}</b>: each claim × phase × family decided on '
            f'three or more models, pooled by random effects (models of one repository at several '
            f'revisions count once). {sw}</div>')


def _pooled_matrix_cell(claim: str, pc, anchor: str) -> str:
    if pc is None:
        return (f'<td class="cell pooled empty" data-claim="{e(claim)}" data-model="{e(S.ALL_MODELS)}">'
                f'<span class="counts">fewer than 3 models decided</span></td>')
    bg, fg = POOLED_COLOURS[pc.state]
    n = pc.total or 1
    bar = "".join(f'<span style="width:{100 * pc.counts[v] / n:.1f}%;background:{POOLED_COLOURS[v][1]}" '
                  f'title="{pc.counts[v]} {e(v)}"></span>' for v in S.POOLED_VERDICTS if pc.counts[v])
    flag = (f'<span class="flag twin" title="pooled records whose random-init twins also pool to '
            f'support">{S.TWIN_FLAG} {pc.twin_artifacts} twin</span>' if pc.twin_artifacts else "")
    return (f'<td class="cell pooled" data-claim="{e(claim)}" data-model="{e(S.ALL_MODELS)}" '
            f'data-state="{e(pc.state)}" style="background:{bg}"><a href="#{anchor}">'
            f'<span class="state" style="color:{fg}">{e(pc.state)}</span> '
            f'<span class="counts">{e(pc.counts_text())} · up to {pc.models} models</span>'
            f'<div class="bar">{bar}</div>{flag}</a></td>')


def _pooled_block(doc, c: S.ClaimInfo, anchor: str, ids: Anchors) -> str:
    """A claim's pooled records: a table (estimate, intervals, τ², I², verdict, twins) and one
    forest plot per record."""
    recs = S.pooled_for(doc, c.id)
    row_ids = [ids.make(anchor, "p", str(k)) for k in range(len(recs))]
    keys = [k for k in ("phase", "family") if any(p.get(k) is not None for p in recs)]
    scoped = any(p.get("scope") != "models" for p in recs)
    rows, figs = [], []
    for p, rid in zip(recs, row_ids):
        bg, fg = POOLED_COLOURS[p["verdict"]]
        twin = p.get("twin") or {}
        twin_txt = (f'<span class="twinv" style="color:{POOLED_COLOURS[twin["verdict"]][1]}" '
                    f'title="{e(twin.get("reason"))}">{e(twin["verdict"])}</span>' if twin else "—")
        if p.get("twin_artifact"):
            twin_txt += f' <span class="flag twin">{S.TWIN_FLAG} artifact?</span>'
        left = p.get("left_out") or []
        left_txt = (f'<details class="extra"><summary>{len(left)} left out</summary><dl>'
                    + "".join(f"<dt>{e(x['model'])}</dt><dd>{e(x['reason'])}</dd>" for x in left)
                    + "</dl></details>") if left else ""
        key_cells = "".join(f'<td class="t{" mono" if k == "family" else ""}">{e(p.get(k) or "—")}</td>'
                            for k in keys)
        scope_cell = f'<td class="t">{e(p.get("scope"))}</td>' if scoped else ""
        rows.append(
            f'<tr id="{rid}">{scope_cell}{key_cells}<td>{e(p.get("k"))}</td>'
            f'<td>{e(S.fmt_signed(p["effect"]))}</td><td>{e(S.fmt_ci(p["ci"]))}</td>'
            f'<td>{e(S.fmt(p["tau2"]))}</td><td>{p["i2"]:.0%}</td>'
            f'<td>{e(S.fmt_ci(p["prediction_interval"]))}</td>'
            f'<td class="v t" style="background:{bg};color:{fg}">{e(p["verdict"])}</td>'
            f'<td class="t">{twin_txt}</td><td class="reason">{e(p.get("reason"))}{left_txt}</td></tr>')
        figs.append(_forest_figure(p, rid))
    heads = (('<th class="t">scope</th>' if scoped else "")
             + "".join(f'<th class="t">{k}</th>' for k in keys)
             + '<th>models</th><th>pooled effect (null 0)</th><th>interval</th><th>τ²</th><th>I²</th>'
               '<th>prediction interval</th><th class="t">verdict</th><th class="t">random twins</th>'
               '<th class="t">reason</th>')
    pc = S.pooled_cells(doc).get(c.id)
    state = pc.state if pc else "N/A"
    _, fg = POOLED_COLOURS[state]
    line = (f'<p class="line"><span class="state" style="color:{fg}">{e(state)}</span>'
            + (f" · {e(pc.counts_text(' · '))} of {pc.total} pooled records" if pc else "")
            + f' · {e(recs[0]["method"])}</p>')
    opened = " open" if len(recs) <= OPEN_TABLE_MAX else ""
    plots_open = " open" if len(recs) <= OPEN_PLOTS_MAX else ""
    return (f'<div class="cm pooledblock" id="{anchor}"><h3>pooled over <span class="model">'
            f'{e(S.ALL_MODELS)}</span></h3>{line}'
            f'{_pooled_overview([(p, rid) for p, rid in zip(recs, row_ids) if p.get("scope") == "models"])}'
            f'<details class="table"{opened}><summary>Pooled records ({len(recs)})</summary>'
            f'<table class="records"><thead><tr>{heads}</tr></thead><tbody>{"".join(rows)}'
            f'</tbody></table></details>'
            f'<details class="plots forests"{plots_open}><summary>Forest plots ({len(figs)}) — each '
            f'model\'s effect and interval, the pooled diamond, the prediction interval, the '
            f'minimum effect dashed</summary><div class="fgrid">{"".join(figs)}</div></details></div>')


def _pooled_overview(hits: list[tuple[dict, str]]) -> str:
    """A phase × family grid of the across-models pooled verdicts (pooled effect inside),
    linking to the table rows."""
    if len(hits) < 2:
        return ""
    ph = list(dict.fromkeys(p.get("phase") for p, _ in hits))
    fam = list(dict.fromkeys(p.get("family") for p, _ in hits))
    idx = {(p.get("family"), p.get("phase")): (p, rid) for p, rid in hits}
    if ph == [None]:
        idx = {(None, f): hit for (f, _), hit in idx.items()}
        ph, fam = fam, [None]
    head = "".join(f"<th>{e(x) if x is not None else '—'}</th>" for x in ph)
    rows = []
    for f in fam:
        tds = []
        for x in ph:
            hit = idx.get((f, x))
            if hit is None:
                tds.append('<td class="empty"></td>')
                continue
            p, rid = hit
            tip = f"{p['verdict']}: {p.get('reason', '')}"
            flag = S.TWIN_FLAG if p.get("twin_artifact") else ""
            tds.append(f'<td><a href="#{rid}" style="background:{POOLED_COLOURS[p["verdict"]][0]}" '
                       f'title="{e(tip)}">{e(S.fmt_short(p["effect"]))}{flag}</a></td>')
        rows.append(f'<tr><th class="row">{e(f) if f is not None else "pooled effect"}</th>{"".join(tds)}</tr>')
    return (f'<table class="overview"><thead><tr><th></th>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _short_spec(spec: str) -> str:
    """A model spec for a plot row: a file or folder path by its last part (the full spec is
    the row's tooltip); hub ids and other specs as they are."""
    base = spec[len("random:"):] if spec.startswith("random:") else spec
    if base.startswith(("/", "./", "../", "~")):
        base = base.rstrip("/").rsplit("/", 1)[-1]
    return ("random:" if spec.startswith("random:") else "") + base


def _forest_figure(p: dict, rid: str) -> str:
    rows = []
    for inp in p["inputs"]:
        ci = inp.get("ci") or [None, None]
        if not (S.is_num(ci[0]) and S.is_num(ci[1])):
            ci = [inp["effect"] - 1.96 * inp["se"], inp["effect"] + 1.96 * inp["se"]]
        rows.append({"label": inp["model"], "short": _short_spec(inp["model"]),
                     "effect": inp["effect"], "lo": ci[0], "hi": ci[1]})
    where = " · ".join(x for x in (p.get("phase"), p.get("family")) if x) or p["claim"]
    scope = "" if p.get("scope") == "models" else f" ({p['scope']})"
    svg = forest_svg(rows, p["effect"], p["ci"], p["prediction_interval"],
                     direction=p.get("direction") or "greater", min_effect=p.get("min_effect") or 0.0,
                     title=f"{p['claim']} pooled over {p['k']} models{scope}: {where}",
                     pooled_label=f"pooled ({p['k']} models)")
    _, fg = POOLED_COLOURS[p["verdict"]]
    twin = p.get("twin")
    twin_txt = (f" · random twins: {twin['verdict']} (effect {S.fmt_signed(twin['effect'])}, "
                f"τ² {S.fmt(twin['tau2'])})" if twin else "")
    return (f'<figure style="border-left-color:{fg}"><figcaption><a href="#{rid}"><b>{e(where)}</b>'
            f'{e(scope)}</a> <span style="color:{fg};font-weight:650">{e(p["verdict"])}</span><br>'
            f'<span class="num">τ² {e(S.fmt(p["tau2"]))} · I² {p["i2"]:.0%} · Q p '
            f'{e(S.fmt_p(p.get("q_p")))}{e(twin_txt)}</span></figcaption>{svg}</figure>')


# -- run metadata --------------------------------------------------------------------------
def _phase_text(phases: dict) -> str:
    return " · ".join(f"{name} {a}–{b}" if a != b else f"{name} {a}"
                      for name, a, b in S.phase_ranges(phases))


def _run_section(run: dict, models_with_records: list[str]) -> str:
    rows = [("harness commit", f'<span class="mono">{e(run.get("harness_commit"))}</span>'),
            ("started", e(run.get("started")))]
    if run.get("finished"):
        rows.append(("finished", e(run.get("finished"))))
    rows += [("α", e(run.get("alpha"))), ("seed", e(run.get("seed")))]
    versions = run.get("versions") or {}
    rows.append(("versions", ", ".join(f"{e(k)} {e(v)}" for k, v in versions.items()) or "—"))
    if run.get("machine"):
        rows.append(("machine", e(run["machine"])))
    cal = run.get("calibration")
    if cal:
        sha = str(cal.get("sha256") or "")
        rows.append(("calibration", f'{e(cal.get("source"))} · {e(cal.get("tokens"))} tokens · '
                                    f'sha256 <span class="mono" title="{e(sha)}">{e(sha[:16])}</span>'))
    else:
        rows.append(("calibration", "— (no activation claim ran)"))
    meta = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    mrows = []
    described = sorted(run.get("models", []), key=lambda m: (m.get("spec") not in models_with_records,
                                                             str(m.get("spec")).startswith("random:")))
    for m in described:
        spec = str(m.get("spec"))
        role = ("" if spec in models_with_records else
                ' <span class="twinv">(random-init twin: control)</span>' if spec.startswith("random:")
                else ' <span class="twinv">(no records)</span>')
        mrows.append(f'<tr><td class="mono">{e(m.get("spec"))}{role}</td><td>{e(m.get("architecture"))}</td>'
                     f'<td>{e(m.get("num_layers"))}</td>'
                     f'<td class="mono" title="{e(m.get("fingerprint"))}">{e(str(m.get("fingerprint", ""))[:16])}</td>'
                     f'<td>{e(S.fingerprint_how(m))}</td>'
                     f'<td>{e(_phase_text(m.get("phases") or {}))}</td>'
                     f'<td>{e(S.calibration_text(m))}</td></tr>')
    models_table = (f'<h3>Models</h3><table class="meta"><thead><tr><th>spec</th><th>architecture</th>'
                    f'<th>layers</th><th>fingerprint</th><th>fingerprint from</th><th>phases</th>'
                    f'<th>calibration</th></tr></thead>'
                    f'<tbody>{"".join(mrows)}</tbody></table>')
    return (f'<section class="card" id="run"><h2>Run</h2><table class="meta">{meta}</table>'
            f'{models_table}</section>')
