"""Every HTML page loradag generates opens offline: no external URL in attributes, CSS or scripts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from offline import external_references
from project import REPO, copy_project

from stages.lib import report_html

PAGE = REPO / ".dvc" / "plots" / "page.html"


def test_the_checker_catches_each_kind_of_external_reference() -> None:
    assert external_references('<p>x</p><img src="a/b.png"><a href="#top">top</a>') == []
    for page in (
        '<script src="https://cdn.jsdelivr.net/npm/vega@5"></script>',
        '<link rel="stylesheet" href="//cdn.example.com/a.css">',
        "<style>body{background:url(https://example.com/a.png)}</style>",
        "<style>@import 'theme.css';</style>",
        '<div style="background: url(http://x.org/i.png)"></div>',
        "<script>fetch('https://api.example.com/v1')</script>",
        '<a href="https://example.com">docs</a>',
    ):
        assert external_references(page), page


def test_the_plots_page_is_vl_convert_bundle_and_loads_nothing() -> None:
    page = PAGE.read_text(encoding="utf-8")
    assert "{plot_divs}" in page and "{scripts}" not in page  # DVC's CDN <script> tags have nowhere to go
    assert external_references(page) == []
    check = subprocess.run([sys.executable, "scripts/vendor_vega.py", "--check"], cwd=REPO, capture_output=True)
    assert check.returncode == 0, check.stdout  # regenerated from the installed package: the same bytes


def test_decision_html_is_self_contained() -> None:
    rows = {
        "intervals": [{"metric": "token_f1", "side": "adapter", "delta": 0.08, "ci_low": 0.0, "ci_high": 0.19}],
        "answer_lengths": [{"side": s, "tokens": t, "answers": 2} for s in ("base", "adapter") for t in (0, 12)],
        "judge_scores": [{"side": "base", "score": score, "answers": score} for score in range(6)],
    }
    markdown = "# Adapter decision\n\n**Verdict: KEEP.** Answer: <https://x.org>.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    page = report_html.render(markdown, rows, "token_f1", 0.02, judged=True)
    assert page.count("<svg") == 3 and "<script" not in page and "<table>" in page
    assert external_references(page) == ["https://x.org"]  # an answer's URL stays text: no link is made of it
    page = report_html.render(markdown.replace(" Answer: <https://x.org>.", ""), rows, "token_f1", 0.02, True)
    assert external_references(page) == []


@pytest.mark.slow
def test_dvc_plots_show_and_diff_write_pages_that_load_nothing(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "loradag")
    for name, text in {
        "data/split/per_source.csv": "source,part,pairs\na.md,train,8\na.md,eval,2\n",
        "data/evaluate/intervals.csv": "metric,side,delta,ci_low,ci_high\ntoken_f1,adapter,0.08,0.0,0.19\n",
        "data/evaluate/answer_lengths.csv": "side,tokens,answers\nbase,0,3\nadapter,0,5\n",
        "data/evaluate/judge_scores.csv": "side,score,answers\nbase,0,3\nadapter,0,5\n",
    }.items():
        (project.root / name).write_text(text)
    project.commit("plot tables")
    project.dvc("plots", "show", "-o", "shown")
    (project.root / "data/split/per_source.csv").write_text("source,part,pairs\na.md,train,7\na.md,eval,3\n")
    project.dvc("plots", "diff", "HEAD", "-o", "diffed")
    for out in ("shown", "diffed"):
        page = (project.root / out / "index.html").read_text(encoding="utf-8")
        assert page.count("vegaEmbed('#") == 7, out  # every plot of dvc.yaml, drawn by the inlined bundle
        assert external_references(page) == [], out
    shutil.rmtree(project.root)
