"""The HTML report in a real browser: at 1400 px (and a narrower laptop width) no table, figure or
section is wider than the viewport — long texts wrap instead of pushing columns off the page.

Headless Chromium (Debian's ``chromium`` package) loads the report with a small script appended
that measures every table, section and figure after layout and writes what it found into the
DOM, which ``--dump-dom`` prints. Skipped where no Chromium is installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from reports import html as H
from tests.report_docs import make_doc

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium installed (apt install chromium)")

MEASURE = """<script>
window.addEventListener('load', function () {
  var width = document.documentElement.clientWidth, wide = [];
  document.querySelectorAll('table, section, figure, svg, pre, details').forEach(function (el) {
    var r = el.getBoundingClientRect();
    if (r.width > 0 && r.right > width + 1) {
      var s = el.closest('section');
      wide.push({tag: el.tagName, cls: String(el.getAttribute('class') || ''),
                 section: s ? s.id : null, right: Math.round(r.right)});
    }
  });
  var out = document.createElement('pre');
  out.id = 'strata-layout';
  out.textContent = JSON.stringify({viewport: width, scroll: document.documentElement.scrollWidth,
                                    wide: wide, tables: document.querySelectorAll('table').length});
  document.body.appendChild(out);
});
</script>"""


def layout(html: str, tmp_path, width: int) -> dict:
    page = tmp_path / f"page-{width}.html"
    page.write_text(html.replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    run = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu",
                          f"--window-size={width},1000", "--virtual-time-budget=5000",
                          "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="strata-layout">([^<]*)</pre>', run.stdout)
    assert found, f"the browser printed no layout (rc {run.returncode}): {run.stderr[-500:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


@pytest.mark.parametrize("width", [1400, 1100])
def test_every_table_fits_the_page(tmp_path, width):
    html = H.render_html(make_doc())
    assert H.trust_rows(), "the trust table must be part of the page this test measures"
    found = layout(html, tmp_path, width)
    assert found["tables"] > 10
    assert found["wide"] == [], found["wide"]
    assert found["scroll"] <= found["viewport"]


def test_the_check_sees_a_table_that_is_too_wide(tmp_path):
    """The measurement itself: an unwrappable cell wider than the page is reported."""
    html = H.render_html(make_doc()).replace(
        "</main>", '<section id="wide"><table><tr><td style="white-space:nowrap">'
        + "x" * 400 + "</td></tr></table></section></main>")
    found = layout(html, tmp_path, 1400)
    assert any(w["section"] == "wide" and w["tag"] == "TABLE" for w in found["wide"])
