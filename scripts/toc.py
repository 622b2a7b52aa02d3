"""README.md's table of contents, generated from its `##` and `###` headings (GitHub's anchors).

python scripts/toc.py          # rewrite the list between <!-- toc --> and <!-- /toc --> in README.md
python scripts/toc.py --check  # exit 1 if it differs from the headings (tests/test_readme.py runs this)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- toc -->", "<!-- /toc -->"


def anchor(title: str, seen: dict[str, int]) -> str:
    """GitHub's anchor: lower case, punctuation dropped, spaces to hyphens; repeats get -1, -2, ..."""
    slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
    count = seen.get(slug, 0)
    seen[slug] = count + 1
    return f"{slug}-{count}" if count else slug


def headings(text: str) -> list[tuple[int, str]]:
    """(level, title) of every ## and ### heading outside fenced code, after the table itself."""
    found, fenced = [], False
    for line in text.split(END, 1)[-1].splitlines():
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"(#{2,3}) (.+)$", line)
        if match:
            found.append((len(match[1]), match[2]))
    return found


def table(text: str) -> str:
    seen: dict[str, int] = {}
    lines = []
    for level, title in headings(text):
        link = anchor(title, seen)
        lines.append(f"{'  ' * (level - 2)}- [{title}](#{link})")
    return "\n".join(lines)


def with_table(text: str) -> str:
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    return f"{before}{START}\n{table(text)}\n{END}{after}"


def main(argv: list[str]) -> int:
    text = README.read_text(encoding="utf-8")
    if START not in text or END not in text:
        print(f"{README}: no {START} ... {END} markers", file=sys.stderr)
        return 1
    fresh = with_table(text)
    if "--check" in argv:
        if fresh != text:
            print(f"{README}: the table of contents differs from the headings; run python scripts/toc.py")
            return 1
        return 0
    README.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
