"""The HTML report (jobs/report.py --html): built from a real scored and evaluated ML-100k
warehouse, it is one self-contained file whose plots all render in a real headless Chromium
with no console error; a screenshot is taken as a person would see it."""

from __future__ import annotations

import re

import pytest

from tests import browser
from tests.conftest import SLICE_USERS

pytestmark = pytest.mark.spark


def test_report_html_is_self_contained_and_complete(evaluated, tmp_path, capsys):
    from r2ec_batch.jobs import report

    out = tmp_path / "reports" / "r.html"
    assert report.main(["--warehouse", str(evaluated), "--html", str(out)]) == 0
    assert "(6 plots, " in capsys.readouterr().out and out.is_file()
    html = out.read_text(encoding="utf-8")
    # one file: every image is inline data, nothing is fetched from anywhere
    assert len(re.findall(r'<img src="data:image/png;base64,', html)) == 6
    assert not re.search(r'(src|href)="(https?:)?//', html)
    for section in ("Model accuracy", "Published lists", "Input health", "Three users"):
        assert section in html
    assert html.count('class="user"') == 3 and "Rationale" in html
    assert "r2ec-" in html and "ndcg@10" in html  # the latest quality table names the model
    # the headline figures, recomputed from the tables themselves
    from deltalake import DeltaTable

    from r2ec_batch.live_runs import published

    kpis = dict(re.findall(r'<div class="kpi">([^<]+)<b>([^<]+)</b></div>', html))
    recs = published(str(evaluated), "recommendations", last_only=True)
    rats = published(str(evaluated), "rationales", last_only=True)
    n_items = len(DeltaTable(str(evaluated / "items")).to_pandas(columns=["item_id"]))
    k = int(recs.groupby("user_id").size().max())
    assert kpis["users scored"] == f"{recs['user_id'].nunique():,}" == str(SLICE_USERS)
    assert kpis["items per user"] == str(k)
    assert kpis[f"coverage@{k}"] == f"{recs['item_id'].nunique() / n_items:.1%}"
    assert kpis["fallback rate"] == f"{rats['fallback'].notna().mean():.1%}"
    assert recs["run_id"].iloc[0] in html  # the page is about the live run
    # what the run cost, from its ledger rows (every part of the run)
    ledger = DeltaTable(str(evaluated / "scoring_runs")).to_pandas()
    mine = ledger[ledger["run_id"] == recs["run_id"].iloc[0]]
    seconds = mine[["wall_seconds_read", "wall_seconds_score", "wall_seconds_write"]].sum().sum()
    assert kpis["seconds per 1,000 users"] == \
        f"{seconds * 1000 / mine['users_scored'].sum():,.1f} (cpu)"
    assert kpis["users scored with an error"] == "0"


@pytest.mark.skipif(browser.available() is not None, reason=str(browser.available()))
def test_report_renders_in_headless_chromium(evaluated, tmp_path):
    from r2ec_batch.report_html import render

    html, shown = render(str(evaluated))
    page = tmp_path / "report.html"
    page.write_text(html, encoding="utf-8")
    got = browser.render(page, tmp_path / "report.png")
    assert got["errors"] == [], got["errors"]
    assert len(got["images"]) == len(shown["figures"]) == 6
    assert all(w >= 400 and h >= 200 for w, h, _ in got["images"]), got["images"]
    assert got["title"].startswith("R²ec report") and got["height"] > 2000
    assert got["screenshot"].stat().st_size > 100_000  # a page of plots, not a blank one


@pytest.mark.skipif(browser.available() is not None, reason=str(browser.available()))
def test_the_browser_check_sees_console_errors_and_broken_images(tmp_path):
    """The control: the same check on a page with a script error and a missing image fails."""
    page = tmp_path / "bad.html"
    page.write_text('<html><body><img src="missing.png" alt="x">'
                    "<script>console.error('boom'); undefinedCall();</script></body></html>")
    got = browser.render(page, tmp_path / "bad.png")
    assert len(got["errors"]) >= 2 and got["images"][0][0] == 0
