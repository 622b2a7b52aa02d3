"""README.md: its table of contents lists every heading (scripts/toc.py regenerates it)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("toc", ROOT / "scripts/toc.py")
assert spec and spec.loader
toc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(toc)


def test_table_of_contents_matches_the_headings() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert toc.with_table(text) == text, "README.md's table of contents is stale: run python scripts/toc.py"


def test_every_heading_is_linked_by_githubs_anchor() -> None:
    text = "intro\n<!-- toc -->\n<!-- /toc -->\n## Use it\n```bash\n## not a heading\n```\n"
    text += "### Chat: `loradag chat`\n## Use it\n"
    assert toc.table(text).splitlines() == [
        "- [Use it](#use-it)",
        "  - [Chat: `loradag chat`](#chat-loradag-chat)",
        "- [Use it](#use-it-1)",
    ]


def test_setup_commands_stay_first() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.index("bash scripts/setup.sh") < text.index("<!-- toc -->") < text.index("## Train on my own folder")
