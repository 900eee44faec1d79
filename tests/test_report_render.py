"""The report renderers (reports/html.py, markdown.py, terminal.py, svg.py) on a realistic
two-model document: self-contained HTML, one matrix cell per claim × model, one profile plot
per record with a profile, heatmaps, escaping, and a terminal matrix within 100 columns."""

# Tolerances (tests/tolerance.py): float64 layout arithmetic; abs=0.06/0.12 are SVG coordinates
# rounded to 0.1 px by the renderer.

from __future__ import annotations

import copy
import re
from collections import Counter
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.report_docs import make_doc
from reports import html as H
from reports import markdown as M
from reports import summary as S
from reports import svg
from reports import terminal as T

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr", "circle", "line", "rect", "path", "polyline", "polygon"}


class Checker(HTMLParser):
    """Collects start tags with attributes and checks that non-void elements nest and close."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(text: str) -> Checker:
    c = Checker()
    c.feed(text)
    c.close()
    return c


@pytest.fixture(scope="module")
def doc():
    return make_doc()


@pytest.fixture(scope="module")
def page(doc):
    return H.render_html(doc)


@pytest.fixture(scope="module")
def parsed(page):
    return parse(page)


def test_fixture_is_two_models_with_the_cases_the_report_must_show(doc):
    models = S.models(doc)
    assert models == ["smollm2-135m", "synthetic:planted-adjacent"]
    verdicts = Counter(r["verdict"] for r in doc["records"])
    # every verdict a decision gives (ERROR records, from probes that raise, are rendered by
    # test_plugin_e2e's test_a_probe_that_raises_...)
    assert all(verdicts[v] > 0 for v in S.VERDICTS if v != "ERROR")
    assert any(S.twin_artifact(r) for r in doc["records"])
    assert any(S.not_surviving_holm(r) for r in doc["records"])
    assert any(r["matrix"] for r in doc["records"])


def test_html_is_self_contained(page, parsed):
    assert not re.search(r"https?:", page, re.I)
    assert "//" not in page                       # no protocol-relative URLs, no JS comments either
    assert "url(" not in page and "@import" not in page
    for tag, attrs in parsed.tags:
        assert tag not in ("link", "iframe", "object", "embed", "img") or attrs.get("src", "").startswith("data:")
        if tag == "script":
            assert "src" not in attrs
        for name in ("src", "href", "xlink:href", "action", "srcset", "poster"):
            value = attrs.get(name)
            if value is not None:
                assert value.startswith("#") or value.startswith("data:"), (tag, name, value)


def test_html_parses_and_nests(parsed, page):
    assert parsed.errors == []
    assert parsed.stack == []
    assert page.startswith("<!doctype html>")
    assert not re.search(r'="[^"<>]*"[A-Za-z]', page)   # attributes separated by whitespace


def test_internal_links_resolve(parsed):
    ids = Counter(attrs["id"] for _, attrs in parsed.tags if "id" in attrs)
    assert all(n == 1 for n in ids.values()), [k for k, n in ids.items() if n > 1]
    hrefs = [attrs["href"][1:] for tag, attrs in parsed.tags if tag == "a" and "href" in attrs]
    assert hrefs and all(h in ids for h in hrefs)


def test_one_matrix_cell_per_claim_and_model(doc, parsed):
    cells = [(a["data-claim"], a["data-model"]) for tag, a in parsed.tags
             if tag == "td" and "cell" in a.get("class", "").split()]
    expected = {(c.id, m) for c in S.claims(doc) for m in S.models(doc)}
    assert len(cells) == len(expected) == 5 * 2
    assert set(cells) == expected


def test_matrix_cells_state_and_links(doc, parsed, page):
    states = {(a["data-claim"], a["data-model"]): a.get("data-state") for tag, a in parsed.tags
              if tag == "td" and "cell" in a.get("class", "").split()}
    assert states[("scale-schedule-low-dim", "smollm2-135m")] == "SUPPORTED"
    assert states[("adjacent-far-from-null", "smollm2-135m")] == "MIXED"
    assert states[("late-layers-change-least", "synthetic:planted-adjacent")] is None  # not run
    # every run cell links to the detail block of that claim × model
    cell_div_ids = {a["id"] for tag, a in parsed.tags if tag == "div" and "cm" in a.get("class", "").split()}
    links = re.findall(r'<td class="cell"[^>]*><a href="#([^"]+)"', page)
    assert len(links) == 9 and set(links) <= cell_div_ids


def test_twin_artifacts_are_flagged_per_cell(doc, page):
    for (claim, model), c in S.cells(doc).items():
        n = sum(S.twin_artifact(r) for r in doc["records"] if r["claim"] == claim and r["model"] == model)
        assert c.twin_artifacts == n
        cell_html = re.search(rf'<td class="cell[^"]*" data-claim="{re.escape(claim)}" '
                              rf'data-model="{re.escape(model)}".*?</td>', page).group(0)
        assert (f"{S.TWIN_FLAG} {n} twin" in cell_html) == (n > 0)
    n_art = sum(S.twin_artifact(r) for r in doc["records"])
    assert page.count("artifact?</span>") == n_art  # one flag per record row


def test_holm_failures_marked_in_records_tables(doc, page):
    n = sum(S.not_surviving_holm(r) for r in doc["records"])
    assert n > 0
    assert page.count(f'title="does not survive Holm">{S.HOLM_FLAG} Holm') == n


def test_one_profile_plot_per_record_with_profile(doc, page):
    n_profiles = sum(r["profile"] is not None for r in doc["records"])
    assert n_profiles > 20
    assert page.count('<svg class="profile"') == n_profiles


def test_one_heatmap_per_distinct_matrix_per_claim_and_model(doc, page):
    distinct = {(r["claim"], r["model"], repr(r["matrix"])) for r in doc["records"] if r["matrix"]}
    assert len(distinct) == 4 * 2   # one per family per model in the fixture
    assert page.count('<svg class="heatmap"') == len(distinct)


def test_records_table_has_a_row_per_record(doc, page):
    for c in S.claims(doc):
        for m in S.models(doc):
            recs = S.records_for(doc, c.id, m)
            block = re.search(rf'id="{re.escape(H.slug(c.id))}--{re.escape(H.slug(m))}".*?</table></details>',
                              page, re.S)
            if not recs:
                assert block is None
                continue
            assert block.group(0).count('<tr id="') == len(recs)


def test_strings_from_records_are_escaped(doc):
    bad = copy.deepcopy(doc)
    for r in bad["records"]:
        if r["claim"] == "qk-sym-positive":
            r["statement"] = "Heads <script>alert('x')</script> & \"quotes\" | pipes"
            r["reason"] = "<img src=x onerror=alert(1)>"
            r["null"]["kind"] = "<b>bold</b>"
    r0 = bad["records"][0]
    r0["extra"] = {"note": "</table><script>x</script>"}
    page = H.render_html(bad)
    assert "<script>alert" not in page and "<img" not in page and "<b>bold" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quotes&quot;" in page
    assert "</table><script>x" not in page
    checker = parse(page)
    assert checker.errors == [] and [t for t, _ in checker.tags].count("script") == 1
    md = M.render_markdown(bad)
    assert "<script>" not in md and "<img" not in md
    assert "&lt;img src=x onerror=alert(1)&gt;" in md


def test_profile_svg_puts_phase_bands_at_their_layers():
    phases = {"A": [0, 1, 2], "B": [3, 4], "C": [5, 6, 7, 8, 9]}
    out = svg.profile_svg(list(range(9)), [0.1 * i for i in range(9)], null=[0.0] * 9,
                          phases=phases, highlight="B", width=300, height=150)
    rects = re.findall(r'<rect x="([\d.]+)" y="\d+" width="([\d.]+)" height="\d+" fill="([^"]+)"', out)
    left, pw = 46, 300 - 46 - 8
    x0, x1 = -0.5, 9.5            # layers 0..9 span the axis (phase C reaches layer 9)

    def sx(x):
        return left + (x - x0) / (x1 - x0) * pw
    hl = [(float(x), float(w)) for x, w, f in rects if f == svg.HIGHLIGHT_FILL]
    assert len(hl) == 1
    assert hl[0][0] == pytest.approx(sx(2.5), abs=0.06)
    assert hl[0][0] + hl[0][1] == pytest.approx(sx(4.5), abs=0.12)
    assert len([f for _, _, f in rects if f != "none"]) == 3
    assert out.count('class="null-line"') == 1
    # the profile line has one vertex per finite value; a missing value splits it
    out2 = svg.profile_svg([0, 1, 2, 3, 4], [1.0, 2.0, None, 3.0, 4.0])
    polys = re.findall(r'<polyline points="([^"]+)" fill="none" stroke="#1f5fbf"', out2)
    assert [len(p.split()) for p in polys] == [2, 2]


def test_profile_svg_draws_null_band_from_sd():
    doc = make_doc()
    rec = next(r for r in doc["records"] if r["profile"])
    rec["profile"]["null_sd"] = [0.01] * len(rec["profile"]["layers"])
    lo, hi = H._profile_band(rec["profile"])
    assert hi[0] - lo[0] == pytest.approx(2 * 1.96 * 0.01)
    assert 'class="null-band"' in H._profile_figure(rec, "x", {})


def test_heatmap_svg_draws_every_cell_once():
    vals = [[(i - j) / 4 for j in range(5)] for i in range(5)]
    vals[1][3] = None
    out = svg.heatmap_svg(list(range(5)), vals, phases={"A": [0, 1], "B": [2, 3, 4]})
    assert out.count("h1v1h-1z") == 25
    assert 'fill="#d9d9d9" d="M3 1h1v1h-1z"' in out          # the missing cell, grey
    assert out.count('stroke="#fff"') == 2                    # one boundary, both axes


def test_colour_scale_and_ticks():
    assert svg.colour_scale([[-0.2, 0.5]])[:2] == (-0.5, 0.5)
    assert svg.colour_scale([[0.2, 0.5]])[:2] == (0.2, 0.5)
    assert svg.interpolate(("#000000", "#ffffff"), 0.5) == "#808080"
    assert svg.nice_ticks(0.0, 1.0, 4) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert svg.nice_ticks(-0.03, 0.41, 4) == pytest.approx([0.0, 0.2, 0.4])
    assert svg.layer_ticks(0, 29) == [0, 5, 10, 15, 20, 25]


def test_markdown_matrix_and_tables(doc):
    md = M.render_markdown(doc)
    lines = md.splitlines()
    start = lines.index("## Claims × models") + 2
    matrix = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        matrix.append(line)
    assert len(matrix) == 2 + 5                        # header, separator, one row per claim
    assert all(line.count(" | ") == 2 for line in matrix[2:])
    assert "not run" in matrix[-1]
    n_rows, in_table = 0, False
    for line in lines:                      # rows of the per-claim × model tables
        if line.startswith("### "):
            in_table = True
        elif line.startswith("## "):
            in_table = False
        elif in_table and line.startswith("| ") and not line.startswith(("| phase", "| observed", "| ---")):
            n_rows += 1
    assert n_rows == len(doc["records"])
    # a claim without phase/family parameters has no such columns
    late = md[md.index("### late-layers-change-least on"):]
    assert late.splitlines()[2].startswith("| observed | null mean ± sd |")
    assert "## Run" in md and doc["run"]["harness_commit"] in md
    bad = copy.deepcopy(doc)
    bad["records"][0]["reason"] = "a | b"
    assert "a \\| b" in M.render_markdown(bad)


def test_terminal_matrix_fits_and_has_a_legend(doc):
    out = T.render_matrix(doc, width=100)
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert all(line.isascii() for line in lines)
    for c in S.claims(doc):
        assert sum(line.startswith(c.id) for line in lines) == 1
    header = lines[0]
    assert "smollm2-135m" in header and "synthetic:planted-adjacent" in header  # names, not M1
    assert " = " not in out  # both names fit: no legend of full names needed
    row = next(line for line in lines if line.startswith("adjacent-far-from-null"))
    c = S.cell(doc, "adjacent-far-from-null", "smollm2-135m")
    assert f"{c.counts['SUPPORTED']}S" in row and f"!{c.twin_artifacts}" in row


@settings(max_examples=30, deadline=None)
@given(n_models=st.integers(1, 9), name_len=st.integers(3, 60), width=st.integers(40, 120))
def test_terminal_matrix_never_exceeds_width(n_models, name_len, width):
    base = make_doc_small()
    doc = copy.deepcopy(base)
    specs = [f"m{i}-" + "x" * name_len for i in range(n_models)]
    doc["run"]["models"] = [dict(base["run"]["models"][0], spec=s) for s in specs]
    doc["records"] = [dict(r, model=s) for s in specs for r in base["records"]]
    out = T.render_matrix(doc, width=width)
    assert max(len(line) for line in out.splitlines()) <= width
    names = T.header_names(specs, width)
    for spec in specs:
        if names[spec] != spec:  # shortened: the legend gives the full spec
            assert f"{names[spec]} = " in out and out.count(spec[-8:]) >= 1
        assert names[spec] in out


_SMALL = None


def make_doc_small():
    global _SMALL
    if _SMALL is None:
        d = make_doc()
        d["records"] = [r for r in d["records"] if r["model"] == "smollm2-135m"]
        _SMALL = d
    return _SMALL


def test_heatmap_leaves_a_constant_diagonal_out_of_the_colour_range():
    vals = [[1.0 if i == j else 0.01 * (i + j) for j in range(6)] for i in range(6)]
    out = svg.heatmap_svg(list(range(6)), vals)
    assert svg.constant_diagonal(vals)
    assert out.count('class="diagonal"') == 1 and out.count("h1v1h-1z") == 36
    assert ">0.09</text>" in out and ">0.01</text>" in out    # off-diagonal range [0.01, 0.09]
    vals[2][2] = 0.5                                          # not a constant diagonal: in scale
    out2 = svg.heatmap_svg(list(range(6)), vals)
    assert 'class="diagonal"' not in out2 and ">1</text>" in out2


def test_twin_support_flags_only_supported_records(doc):
    rec = copy.deepcopy(next(r for r in doc["records"] if r["twin"]))
    rec["twin"]["verdict"], rec["twin_artifact"] = "SUPPORTED", True
    rec["verdict"] = "REFUTED"
    assert not S.twin_artifact(rec)          # twin column shows it; no artifact flag
    rec["verdict"] = "SUPPORTED"
    assert S.twin_artifact(rec)
    rec["twin_artifact"] = None              # older files: fall back to the twin's verdict
    assert S.twin_artifact(rec)


def test_not_applicable_reasons_are_listed_per_claim_and_model(doc, page):
    reasons = {r["reason"] for r in doc["records"] if r["verdict"] == "N/A"}
    for reason in reasons:
        assert f"<li>{H.e(reason)}" in page


def test_profile_without_a_phase_parameter_can_name_its_phases():
    doc = make_doc()
    rec = next(r for r in doc["records"] if r["claim"] == "scale-schedule-low-dim")
    assert rec["phase"] is None
    assert svg.HIGHLIGHT_FILL not in H._profile_figure(rec, "x", doc["run"]["models"][0]["phases"])
    rec["profile"]["highlight"] = ["C", "E"]       # e.g. a claim comparing E with C
    fig = H._profile_figure(rec, "x", doc["run"]["models"][0]["phases"])
    assert fig.count(f'fill="{svg.HIGHLIGHT_FILL}"') == 2


# -- pooled over models ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def zoo():
    from tests.report_docs import make_zoo_doc
    return make_zoo_doc()


@pytest.fixture(scope="module")
def zoo_page(zoo):
    return H.render_html(zoo)


def test_no_pooled_column_below_three_models(doc, page):
    assert doc["pooled"] == []
    assert S.ALL_MODELS not in T.render_matrix(doc) and "all:" not in T.render_matrix(doc)
    assert "**all models**" not in M.render_markdown(doc)
    assert 'class="forest"' not in page and 'data-model="all models"' not in page


def test_html_pooled_column_and_one_forest_plot_per_pooled_record(zoo, zoo_page):
    parsed = parse(zoo_page)
    assert parsed.errors == [] and parsed.stack == []
    test_internal_links_resolve(parsed)
    cells = {a["data-claim"]: a.get("data-state") for tag, a in parsed.tags
             if tag == "td" and a.get("data-model") == S.ALL_MODELS}
    assert cells == {"zoo-equivalent": "INCONCLUSIVE", "zoo-greater": "HETEROGENEOUS",
                     "zoo-two-sided": "MIXED"}
    assert {p["verdict"] for p in zoo["pooled"]} == set(S.POOLED_VERDICTS)
    assert zoo_page.count('<svg class="forest"') == len(zoo["pooled"]) == 10
    for p in zoo["pooled"]:       # every forest names its record's models in its rows
        for inp in p["inputs"]:
            assert f"<title>{inp['model']}</title>" in zoo_page
    assert "fewer than 3 models decided" not in zoo_page
    assert zoo_page.count("artifact?") >= 1  # zoo-two-sided q_proj: the twins pool to it too


@pytest.mark.parametrize("direction, min_lines, regions", [
    ("greater", 1, 1), ("less", 1, 1), ("two-sided", 2, 2), ("equivalent", 2, 1)])
def test_forest_svg_draws_rows_diamond_prediction_and_minimum_lines(direction, min_lines, regions):
    rows = [{"label": f"org/model-{i}", "effect": 0.3 + 0.05 * i, "lo": 0.25 + 0.05 * i,
             "hi": 0.35 + 0.05 * i} for i in range(4)]
    out = svg.forest_svg(rows, 0.375, (0.3, 0.45), (0.15, 0.6), direction=direction,
                         min_effect=0.1, title="t")
    c = parse(out)
    assert c.errors == [] and c.stack == []
    assert out.count('class="model-ci"') == out.count('class="model-effect"') == 4
    assert out.count('class="pooled"') == 1 and out.count('class="prediction"') == 1
    assert out.count('class="min-effect"') == min_lines
    assert out.count('class="region"') == regions
    assert out.count('class="null"') == 1 and 'class="clipped"' not in out
    # a prediction interval far wider than the rest is clipped at the edge, with an arrow
    wide = svg.forest_svg(rows, 0.375, (0.3, 0.45), (-40.0, 40.0), direction=direction, min_effect=0.1)
    assert wide.count('class="clipped"') == 2 and "[-40, +40]" in wide


def test_forest_svg_escapes_labels():
    out = svg.forest_svg([{"label": "<b>&x", "effect": 0.1, "lo": 0.0, "hi": 0.2}] * 3, 0.1,
                         (0.0, 0.2), (-0.1, 0.3))
    assert "<b>" not in out and "&lt;b&gt;&amp;x" in out


def test_markdown_pooled_column_and_tables(zoo):
    md = M.render_markdown(zoo)
    header = next(line for line in md.splitlines() if line.startswith("| claim |"))
    assert header.endswith("| **all models** |")
    row = next(line for line in md.splitlines() if line.startswith("| [zoo-greater]"))
    assert row.endswith("| 🔷 **HETEROGENEOUS** 2H |")   # across-models records only (C, E)
    row = next(line for line in md.splitlines() if line.startswith("| [zoo-two-sided]"))
    assert row.endswith("| ◐ **MIXED** 1G 1A ⚠1 |")
    assert md.count("pooled over all models") == 3
    pooled_rows = [line for line in md.splitlines()
                   if line.startswith("| models |") or line.startswith("| revisions of ")]
    assert len(pooled_rows) == len(zoo["pooled"])


def test_terminal_pooled_column(zoo):
    out = T.render_matrix(zoo, width=100)
    lines = out.splitlines()
    heads = [line.split() for line in lines if line.startswith("claim ")]
    assert heads[-1][-1] == "all"  # the pooled column closes the last block of models
    row = [line for line in lines if line.startswith("zoo-two-sided")][-1]
    assert row.split()[-4:] == ["M", "1G", "1A", "!1"]
    assert any(line.startswith("all: pooled over >= 3 models") for line in lines)
    for width in (40, 60, 80):
        assert max(len(line) for line in T.render_matrix(zoo, width=width).splitlines()) <= width


def test_short_names_tell_models_apart_and_keep_what_differs():
    specs = ["Qwen/Qwen3-4B", "EleutherAI/pythia-160m@step1000", "EleutherAI/pythia-160m@step2000",
             "random:Qwen/Qwen3-4B", "/data/ckpt/qwen2.5-coder-0.5b-q8_0.gguf", "a/same", "b/same",
             "synthetic:tiny-llama", "meta-llama/Llama-3.1-8B-Instruct-with-a-very-long-suffix"]
    names = S.short_names(specs, max_len=24)
    assert names["Qwen/Qwen3-4B"] == "Qwen3-4B"
    assert names["random:Qwen/Qwen3-4B"] == "random:Qwen3-4B"
    assert names["EleutherAI/pythia-160m@step1000"] == "pythia-160m@step1000"
    assert names["/data/ckpt/qwen2.5-coder-0.5b-q8_0.gguf"] == "qwen2.5-coder-0.5b-q8_0…"[:0] + \
        S.short_names(["qwen2.5-coder-0.5b-q8_0.gguf"], max_len=24)["qwen2.5-coder-0.5b-q8_0.gguf"]
    assert (names["a/same"], names["b/same"]) == ("a/same", "b/same")  # a collision keeps the org
    assert names["synthetic:tiny-llama"] == "synthetic:tiny-llama"
    long = names["meta-llama/Llama-3.1-8B-Instruct-with-a-very-long-suffix"]
    assert len(long) == 24 and long.startswith("Llama-3.1") and long.endswith("suffix") and "…" in long
    assert len(set(names.values())) == len(specs)
    assert all(len(n) <= 24 for n in names.values())
