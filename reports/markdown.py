"""``verdicts.md``: the report as Markdown that reads well rendered (GitHub, any viewer):
the claims × models matrix, a legend, then per claim its statement, statistic, null and a
table of records per model, and the run metadata at the end. Table cells are escaped
(pipes, angle brackets, newlines) so record text cannot break the layout.
"""

from __future__ import annotations

from . import summary as S

MARK = {"SUPPORTED": "✅", "REFUTED": "❌", "INCONCLUSIVE": "❔", "N/A": "➖", "MIXED": "◐",
        "ERROR": "💥"}
POOLED_MARK = {"GENERAL": "🟢", "HETEROGENEOUS": "🔷", "ABSENT": "🔴", "INCONCLUSIVE": "🟡",
               "MIXED": "◐", "N/A": "➖"}


def cell_text(text) -> str:
    """Escape text for a Markdown table cell."""
    s = "" if text is None else str(text)
    s = s.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(s.split())


def inline(text) -> str:
    s = "" if text is None else str(text)
    return " ".join(s.replace("<", "&lt;").replace(">", "&gt;").split())


def _table(header: list[str], rows: list[list[str]], align: str | None = None) -> list[str]:
    align = align or "l" * len(header)
    sep = ["---:" if a == "r" else "---" for a in align]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _anchor(text: str) -> str:
    """GitHub's heading anchor: lowercase, spaces to '-', punctuation dropped."""
    return "".join(ch for ch in text.lower().replace(" ", "-") if ch.isalnum() or ch in "-_")


def _cell(c: S.Cell) -> str:
    if c.total == 0:
        return "not run"
    text = f"{MARK[c.state]} **{c.state}** {S.cell_counts_text(c)}"
    if c.twin_artifacts:
        text += f" {S.TWIN_FLAG}{c.twin_artifacts}"
    if c.not_holm:
        text += f" {S.HOLM_FLAG}{c.not_holm}"
    return text


def render_markdown(doc: dict) -> str:
    claims = S.claims(doc)
    models = S.models(doc)
    cells = S.cells(doc)
    run = doc.get("run", {})
    tot = S.totals(doc)
    out = ["# Strata verdict report", ""]
    out.append(f"{len(claims)} claims × {len(models)} model{'s' if len(models) != 1 else ''} "
               f"({', '.join('`' + inline(m) + '`' for m in models)}), {len(doc['records'])} records, "
               f"α = {run.get('alpha')}. " + ", ".join(f"{tot[v]} {v}" for v in S.VERDICTS if tot[v] or v != "ERROR") + ".")
    out += ["", "## Claims × models", ""]
    rows = [[f"[{cell_text(c.id)}](#{_anchor(c.id)})"] + [_cell(cells[(c.id, m)]) for m in models]
            for c in claims]
    names = S.short_names(models)
    header = ["claim"] + [f"`{cell_text(names[m])}`" for m in models]
    pcells = S.pooled_cells(doc)
    if S.pooled(doc):  # the column "all models": pooled verdicts over the models
        header.append(f"**{S.ALL_MODELS}**")
        for row, c in zip(rows, claims):
            row.append(_pooled_cell(pcells.get(c.id)))
    out += _table(header, rows)
    out += ["", "**Legend.** " + " · ".join(f"{MARK[s]} {s}" for s in S.STATES)
            + " (MIXED: applicable records disagree). Counts: S supported, R refuted, "
            f"I inconclusive, N not applicable, E error (the probe raised). {S.TWIN_FLAG}n: n SUPPORTED records also SUPPORTED on the "
            f"random-init twin (likely artifacts). {S.HOLM_FLAG}n: n supported records that do not "
            "survive Holm adjustment over the session.", ""]
    long = [m for m in models if names[m] != m]
    if long:
        out += ["**Models.** " + " · ".join(f"`{cell_text(names[m])}` = `{cell_text(m)}`"
                                            for m in long), ""]
    if S.pooled(doc):
        out += [f"**{S.ALL_MODELS}:** each claim × phase × family decided on three or more models, "
                "pooled by random effects (revisions of one repository count once). "
                + " · ".join(f"{POOLED_MARK[v]} **{v}**: {S.POOLED_MEANING[v]}"
                             for v in S.POOLED_VERDICTS) + ".", ""]
    for c in claims:
        out += [f"## {c.id}", "", f"> {inline(c.statement)}", "",
                f"- **statistic:** {inline(c.statistic)}",
                f"- **null:** {inline(c.null)}",
                f"- **supported when:** p ≤ α and {S.direction_text(c.direction, c.min_effect)}", ""]
        out += _pooled_table(doc, c)
        for m in models:
            recs = S.records_for(doc, c.id, m)
            if not recs:
                continue
            cl = cells[(c.id, m)]
            out += [f"### {c.id} on `{inline(m)}` — {cl.state} ({S.cell_counts_text(cl, ', ')})", ""]
            keys = [k for k in ("phase", "family") if any(r.get(k) is not None for r in recs)]
            rows = []
            for r in recs:
                verdict = f"{MARK[r['verdict']]} {S.verdict_with_flags(r)}"
                twin = r.get("twin")
                rows.append([cell_text(r.get(k) or "—") for k in keys] + [
                             S.fmt(r.get("observed")), S.fmt_null(r.get("null")),
                             S.fmt_signed(r.get("effect")), S.fmt_ci(r.get("ci")),
                             S.fmt_p(r.get("p")), S.fmt_p(r.get("p_holm")), cell_text(verdict),
                             cell_text(twin.get("verdict") if twin else "—"),
                             cell_text(r.get("reason") or "")])
            out += _table(keys + ["observed", "null mean ± sd", "effect", "interval",
                                  "p", "Holm p", "verdict", "twin", "reason"],
                          rows, "l" * len(keys) + "rrrrrrlll")
            out.append("")
    out += ["## Run", ""]
    versions = ", ".join(f"{k} {v}" for k, v in (run.get("versions") or {}).items())
    cal = run.get("calibration")
    cal_text = (f"{inline(cal.get('source'))}, {cal.get('tokens')} tokens, sha256 `{cal.get('sha256')}`"
                if cal else "— (no activation claim ran)")
    out += [f"- **harness commit:** `{run.get('harness_commit')}`",
            f"- **started:** {run.get('started')}" + (f", finished {run['finished']}" if run.get("finished") else ""),
            f"- **α:** {run.get('alpha')} · **seed:** {run.get('seed')}",
            f"- **versions:** {inline(versions) or '—'}",
            *([f"- **machine:** {inline(run['machine'])}"] if run.get("machine") else []),
            f"- **calibration:** {cal_text}", ""]
    mrows = [[f"`{cell_text(m.get('spec'))}`", cell_text(m.get("architecture")), str(m.get("num_layers")),
              f"`{cell_text(str(m.get('fingerprint', ''))[:16])}`", cell_text(S.fingerprint_how(m)),
              cell_text(" · ".join(f"{n} {a}–{b}" if a != b else f"{n} {a}"
                                   for n, a, b in S.phase_ranges(m.get("phases") or {}))),
              cell_text(S.calibration_text(m))]
             for m in run.get("models", [])]
    out += _table(["model", "architecture", "layers", "fingerprint", "fingerprint from", "phases",
                   "calibration"], mrows, "llrllll")
    out.append("")
    return "\n".join(out)


def _pooled_cell(pc) -> str:
    if pc is None:
        return "fewer than 3 models"
    text = f"{POOLED_MARK[pc.state]} **{pc.state}** {pc.counts_text()}"
    if pc.twin_artifacts:
        text += f" {S.TWIN_FLAG}{pc.twin_artifacts}"
    return text


def _pooled_table(doc: dict, c: S.ClaimInfo) -> list[str]:
    """The claim's pooled records (every scope) as one table."""
    recs = S.pooled_for(doc, c.id)
    if not recs:
        return []
    pc = S.pooled_cells(doc).get(c.id)
    head = f"### {c.id} pooled over {S.ALL_MODELS}"
    if pc is not None:
        head += f" — {pc.state} ({pc.counts_text(', ')})"
    keys = [k for k in ("phase", "family") if any(p.get(k) is not None for p in recs)]
    scoped = any(p.get("scope") != "models" for p in recs)
    rows = []
    for p in recs:
        twin = p.get("twin")
        twin_text = twin["verdict"] if twin else "—"
        if p.get("twin_artifact"):
            twin_text += f" {S.TWIN_FLAG}"
        rows.append(([cell_text(p.get("scope"))] if scoped else [])
                    + [cell_text(p.get(k) or "—") for k in keys]
                    + [str(p["k"]), S.fmt_signed(p["effect"]), S.fmt_ci(p["ci"]), S.fmt(p["tau2"]),
                       f"{p['i2']:.0%}", S.fmt_ci(p["prediction_interval"]),
                       cell_text(f"{POOLED_MARK[p['verdict']]} {p['verdict']}"),
                       cell_text(twin_text), str(len(p.get("left_out") or []))])
    return [head, "", f"{inline(recs[0]['method'])}. Effects are oriented (claimed direction "
            "positive, null 0); forest plots are in verdicts.html.", ""] + _table(
        (["scope"] if scoped else []) + keys + ["models", "pooled effect", "interval", "τ²", "I²",
                                                "prediction interval", "verdict", "random twins",
                                                "left out"],
        rows, "l" * ((1 if scoped else 0) + len(keys)) + "rrrrrrllr") + [""]
