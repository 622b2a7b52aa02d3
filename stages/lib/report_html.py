"""reports/decision.html for `evaluate`: decision.md as one self-contained page, with its charts inline as SVG.

The text and tables are report.render's markdown, converted here (markdown-it, CommonMark + tables), so the
two reports cannot disagree. Charts are drawn offline by vl-convert (vega-lite -> SVG): no script, no URL.

html = render(markdown_text, metrics, plotdata rows, decision metric, min_delta)
"""

from __future__ import annotations

import html
from typing import Any

SIDE_COLOURS = {"base": "#7f7f7f", "adapter": "#1f77b4", "base+rag": "#bcbd22", "adapter+rag": "#17becf"}
STYLE = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;max-width:76em;margin:2em auto;padding:0 1.5em;
color:#1d1d1f}
h1{margin-bottom:.3em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
p:first-of-type{font-size:1.1em;background:#f5f7fa;border-left:4px solid #1f77b4;padding:.7em 1em}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #d0d7de;padding:.3em .55em;
vertical-align:top}th{background:#f3f4f6}tr:nth-child(even) td{background:#fafbfc}
td{max-width:28em;overflow-wrap:anywhere}code{font-size:90%;background:#f3f4f6;padding:0 .25em;border-radius:3px}
pre{background:#f6f8fa;padding:.8em;overflow:auto}.charts{display:flex;flex-wrap:wrap;gap:1.5em;margin:1em 0}
figure{margin:0}figcaption{font-size:13px;color:#555;max-width:34em}
"""


def interval_chart(rows: list[dict[str, Any]], metric: str, min_delta: float) -> dict[str, Any]:
    """side - base per metric: the point and its interval, a rule at 0 and a dashed one at min_delta."""
    sides = [side for side in SIDE_COLOURS if any(row["side"] == side for row in rows)]
    by_row = {
        "y": {"field": "metric", "type": "nominal", "title": None, "sort": None},
        "yOffset": {"field": "side", "sort": sides},
        "color": {"field": "side", "type": "nominal", "title": "vs base", "sort": sides,
                  "scale": {"domain": sides, "range": [SIDE_COLOURS[s] for s in sides]}},
    }  # fmt: skip
    x = {"type": "quantitative", "title": "difference from base, with its interval"}
    return {
        "data": {"values": rows},
        "width": 420,
        "layer": [
            {"mark": {"type": "rule", "color": "#999"}, "encoding": {"x": {"datum": 0, **x}}},
            {
                "mark": {"type": "rule", "color": "#d62728", "strokeDash": [4, 3]},
                "encoding": {"x": {"datum": min_delta, **x}},
            },  # fmt: skip
            {
                "mark": {"type": "rule", "strokeWidth": 2},
                "encoding": {**by_row, "x": {"field": "ci_low", **x}, "x2": {"field": "ci_high"}},
            },  # fmt: skip
            {
                "mark": {"type": "point", "filled": True, "size": 60, "opacity": 1},
                "encoding": {**by_row, "x": {"field": "delta", **x}},
            },  # fmt: skip
        ],
    }


def histogram_chart(rows: list[dict[str, Any]], x: str, x_title: str) -> dict[str, Any]:
    """Grouped bars per side: answers per bucket of `x`."""
    sides = [side for side in SIDE_COLOURS if any(row["side"] == side for row in rows)]
    return {
        "data": {"values": rows},
        "mark": "bar",
        "width": 420,
        "height": 180,
        "encoding": {
            "x": {"field": x, "type": "ordinal", "title": x_title, "axis": {"labelAngle": 0}},
            "xOffset": {"field": "side", "sort": sides},
            "y": {"field": "answers", "type": "quantitative", "title": "answers"},
            "color": {
                "field": "side",
                "type": "nominal",
                "sort": sides,
                "title": None,
                "scale": {"domain": sides, "range": [SIDE_COLOURS[s] for s in sides]},
            },  # fmt: skip
        },
    }


def svg(spec: dict[str, Any]) -> str:
    import vl_convert

    return vl_convert.vegalite_to_svg(spec | {"config": {"font": "sans-serif", "view": {"stroke": None}}})


def figure(spec: dict[str, Any], caption: str) -> str:
    return f"<figure>{svg(spec)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def charts(plots: dict[str, list[dict[str, Any]]], metric: str, min_delta: float, judged: bool) -> str:
    parts = []
    if plots["intervals"]:
        caption = (f"Each side minus base, per metric, with its paired bootstrap interval; the dashed red line is "
                   f"min_delta {min_delta} on {metric}, the decision metric.")  # fmt: skip
        parts.append(figure(interval_chart(plots["intervals"], metric, min_delta), caption))
    lengths = histogram_chart(plots["answer_lengths"], "tokens", "answer length (tokens, bucket start)")
    parts.append(figure(lengths, "Answer lengths per side: answers that reach max_new_tokens fill the last bucket."))
    if judged:
        parts.append(figure(histogram_chart(plots["judge_scores"], "score", "judge score"), "Judge scores per side."))
    return '<div class="charts">' + "".join(parts) + "</div>"


def render(markdown: str, plots: dict[str, list[dict[str, Any]]], metric: str, min_delta: float, judged: bool) -> str:
    """The page: decision.md's verdict, the charts, then the rest of decision.md (its tables, gates, examples)."""
    from markdown_it import MarkdownIt

    # answers are data: raw HTML in them stays text, and a URL in them does not become a link
    body = MarkdownIt("commonmark", {"html": False}).enable("table").disable("autolink").render(markdown)
    first_table = body.find("<table>")
    cut = first_table if first_table >= 0 else len(body)
    body = body[:cut] + "<h2>Charts</h2>\n" + charts(plots, metric, min_delta, judged) + "\n" + body[cut:]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>Adapter decision</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
    )
