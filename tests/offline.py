"""Find what in an HTML page would reach outside it: an external URL in an attribute, in CSS or in a script."""

from __future__ import annotations

import re
from html.parser import HTMLParser

# Attributes a browser fetches or follows. None of them may hold a URL with a scheme or a `//host` start.
LINKING = {"src", "href", "xlink:href", "srcset", "action", "formaction", "poster", "data", "background", "ping",
           "manifest", "cite", "longdesc", "usemap", "codebase", "archive", "lowsrc", "icon"}  # fmt: skip
LOCAL = re.compile(r"^\s*(#|data:|[\w./-]*$)", re.I)  # a fragment, inline data, or a relative path
CSS_FETCH = re.compile(r"url\(\s*['\"]?\s*(?!data:|#)[^)'\"\s]|@import", re.I)
URL = re.compile(r"(?:\b[a-z][a-z0-9+.-]*:)?//[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}[^\s\"'`)<>&\\]*", re.I)
# URLs that may appear in script or markup text because nothing fetches them: XML namespace names, the
# `$schema` ids vega-embed reads to pick vega or vega-lite, a vega-lite warning's issue link, and the editor
# link of vega-embed's menu (turned off by .dvc/plots/page.html's wrapper).
NAMES = {
    "http://www.w3.org/2000/svg",
    "http://www.w3.org/1999/xlink",
    "http://www.w3.org/2000/xmlns/",
    "https://vega.github.io/schema/vega/v6.json",
    "https://vega.github.io/schema/vega-lite/v5.json",
    "https://vega.github.io/schema/vega-lite/v6.json",
    "https://github.com/vega/vega-lite/issues/2415",
    "https://vega.github.io/editor/",
}


class _Scan(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self.in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.in_style = tag == "style"
        for name, value in attrs:
            value = value or ""
            if name in LINKING and not LOCAL.match(value):
                self.found.append(f"<{tag} {name}={value!r}>")
            if name == "style" and CSS_FETCH.search(value):
                self.found.append(f"<{tag} style={value!r}>")
            if tag == "link" and name == "rel" and value.lower() in ("stylesheet", "preload", "import", "prefetch"):
                self.found.append(f"<link rel={value!r}>")

    handle_startendtag = handle_starttag

    def handle_endtag(self, tag: str) -> None:
        self.in_style = False

    def handle_data(self, data: str) -> None:
        if self.in_style and CSS_FETCH.search(data):
            self.found.append(f"<style> {CSS_FETCH.search(data).group()!r}")


def external_references(page: str) -> list[str]:
    """What the page would load or link outside itself: [] for a page that works offline."""
    scan = _Scan()
    scan.feed(page)
    scan.close()
    return scan.found + sorted({url for url in URL.findall(page) if url not in NAMES})
