"""Write .dvc/plots/page.html: DVC's HTML page for `dvc plots show` / `dvc plots diff` with vega inlined.

DVC's own page loads vega, vega-lite and vega-embed from a CDN, so offline it is blank. This page carries the
bundle that vl-convert-python (a locked package) builds from its own copies, so it renders with no network.
.dvc/config points `plots.html_template` at it. Regenerate after upgrading vl-convert-python:

    python scripts/vendor_vega.py          # rewrite .dvc/plots/page.html
    python scripts/vendor_vega.py --check  # exit 1 if the committed page differs from the installed package's
"""

from __future__ import annotations

import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / ".dvc" / "plots" / "page.html"

# DVC's plot divs call `vegaEmbed(el, spec)`. The wrapper turns off the "Open in Vega Editor" action (a link
# to a web site, dead offline) and keeps export as SVG/PNG and the spec's source.
SNIPPET = """
window.vega = vega;
window.vegaLite = vegaLite;
window.vegaEmbed = (el, spec, opts = {}) =>
  vegaEmbed(el, spec, { actions: { export: true, source: true, compiled: false, editor: false }, ...opts });
"""

STYLE = (
    "body{font:14px/1.4 system-ui,sans-serif;margin:1em 2em;color:#222}"
    "body>div{display:inline-block;vertical-align:top;margin:0 2em 2em 0}"
)


def page() -> str:
    """The page: DVC fills `{plot_divs}`; no `{scripts}` placeholder, so DVC's CDN script tags never land."""
    import vl_convert

    bundle = vl_convert.javascript_bundle(SNIPPET)
    assert "{plot_divs}" not in bundle and "</script" not in bundle.lower(), "the bundle would break the page"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n{refresh_tag}\n'
        f"<title>loradag plots</title>\n<style>{STYLE}</style>\n"
        f"<!-- vega {vl_convert.get_vega_version()}, vega-lite, vega-embed {vl_convert.get_vega_embed_version()}"
        f" from vl-convert-python {vl_convert.__version__}: scripts/vendor_vega.py -->\n"
        f"<script>\n{bundle}\n</script>\n</head>\n<body>\n{{plot_divs}}\n</body>\n</html>\n"
    )


def main(argv: list[str]) -> int:
    text = page()
    if "--check" in argv:
        same = PAGE.is_file() and PAGE.read_text(encoding="utf-8") == text
        print(f"{PAGE}: {'matches' if same else 'differs from'} vl-convert-python's bundle")
        return 0 if same else 1
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(text, encoding="utf-8")
    print(f"wrote {PAGE} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
