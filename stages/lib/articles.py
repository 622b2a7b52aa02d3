"""Articles -> clean text: markdown, text and HTML cleaned of markup; PDF and DOCX read through pypdf and python-docx.

Pure functions over the file's bytes or text; the `extract` stage reads the files, calls these and cuts the
text into word windows (`chunk_article`). A file that cannot be used raises `BadArticle` with the reason
(one of extract's skip reasons) so extract names the file, or skips and counts it.
"""

from __future__ import annotations

import html
import io
import re
from bisect import bisect_right
from zipfile import BadZipFile

SUFFIXES = (".md", ".markdown", ".txt", ".html", ".pdf", ".docx")

FRONT_MATTER = re.compile(r"\A(?:---|\+\+\+)\n.*?\n(?:---|\+\+\+)\n", re.S)
FENCE_LINE = re.compile(r"^[ \t]*(?:```|~~~).*$", re.M)
HTML_DROP = re.compile(r"<(script|style|head)\b.*?</\1\s*>", re.S | re.I)
HTML_BLOCK = re.compile(r"</?(?:p|div|h[1-6]|li|ul|ol|pre|br|tr|table|section|article|blockquote)\b[^>]*>", re.I)
INLINE_CODE = re.compile(r"<code\b[^>]*>([^<\n]*)</code>", re.I)  # keep `backticks`: they mark commands and flags
TAG = re.compile(r"<[^>]+>")

# Markdown links, as CommonMark writes them: the reader sees the text, the URL is markup.
_DESTINATION = r"(?:<[^>\n]*>|(?:[^()\s]|\([^()\s]*\))*)(?:\s+(?:\"[^\"\n]*\"|'[^'\n]*'|\([^)\n]*\)))?"
IMAGE = re.compile(r"!\[([^\]\n]*)\](?:\(\s*" + _DESTINATION + r"\s*\)|\[[^\]\n]*\])")
INLINE_LINK = re.compile(r"(?<!\\)\[([^\]\n]+)\]\(\s*" + _DESTINATION + r"\s*\)")
REFERENCE_LINK = re.compile(r"(?<!\\)\[([^\]\n]+)\]\[([^\]\n]*)\]")
SHORTCUT_LINK = re.compile(r"(?<![\\!\]])\[([^\]\n]+)\](?![(\[:])")
DEFINITION = re.compile(r"^ {0,3}\[([^\]\n]+)\]:[ \t]*\S+.*(?:\n|\Z)", re.M)
AUTOLINK = re.compile(r"<((?:https?|ftp|mailto):[^\s<>]+|[\w.+-]+@[\w-]+(?:\.[\w-]+)+)>", re.I)


class BadArticle(Exception):
    """An article that cannot be used; `reason` is one of extract's skip reasons."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def clean_article(raw: str, suffix: str) -> str:
    """Strip front matter, code-fence markers, links' URLs and HTML tags; keep the words and paragraph breaks."""
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    text = FRONT_MATTER.sub("", text, count=1)
    if suffix == ".html":
        text = HTML_DROP.sub(" ", text)
        text = INLINE_CODE.sub(r"`\1`", text)
        text = HTML_BLOCK.sub("\n\n", text)
    else:
        text = FENCE_LINE.sub("", text)
    if suffix in (".md", ".markdown"):
        text = reduce_links(text)
    text = html.unescape(TAG.sub("", text)) if suffix in (".html", ".md", ".markdown") else text
    lines = [line.strip() if suffix == ".html" else line.rstrip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def reduce_links(markdown: str) -> str:
    """Markdown links and images -> their text: `[text](url)` -> text, `![alt](src)` -> alt, `<url>` -> url.

    Reference links keep their text and lose their definitions; a shortcut `[text]` is a link only where a
    definition names it (else the brackets are the author's). An image without alt text leaves nothing.
    """
    labels = {_label(m.group(1)) for m in DEFINITION.finditer(markdown)}
    text = DEFINITION.sub("", markdown)
    text = IMAGE.sub(lambda m: m.group(1).strip(), text)
    text = INLINE_LINK.sub(r"\1", text)
    text = REFERENCE_LINK.sub(r"\1", text)
    text = SHORTCUT_LINK.sub(lambda m: m.group(1) if _label(m.group(1)) in labels else m.group(0), text)
    return AUTOLINK.sub(r"\1", text)


def _label(label: str) -> str:
    return " ".join(label.lower().split())  # CommonMark matches labels case-insensitively, spaces collapsed


def chunk_article(text: str, chunk_words: int, overlap_words: int) -> list[tuple[int, int, int]]:
    """Overlapping word windows as (char_start, char_end, n_words) spans of `text`.

    Windows start every `chunk_words - overlap_words` words; the last one ends at the last word,
    and a text shorter than one window is a single chunk.
    """
    words = [m.span() for m in re.finditer(r"\S+", text)]
    if not words:
        return []
    step = chunk_words - overlap_words
    spans = []
    start = 0
    while True:
        end = min(start + chunk_words, len(words))
        spans.append((words[start][0], words[end - 1][1], end - start))
        if end == len(words):
            return spans
        start += step


def pdf_text(raw: bytes) -> tuple[str, list[int]]:
    """The text layer of a PDF, pages separated by a blank line, and the offset where each page starts."""
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PdfReadError

    try:
        reader = PdfReader(io.BytesIO(raw))
        if reader.is_encrypted and not reader.decrypt(""):  # many PDFs are encrypted with an empty password
            raise BadArticle("unreadable", "is an encrypted PDF; decrypt it (e.g. `qpdf --decrypt`) first")
        pages = [page.extract_text() or "" for page in reader.pages]
    except FileNotDecryptedError as err:
        raise BadArticle("unreadable", "is an encrypted PDF; decrypt it (e.g. `qpdf --decrypt`) first") from err
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, OSError) as err:
        # pypdf reports a damaged file through any of these, depending on where the damage is
        raise BadArticle("parse_error", f"is not a readable PDF ({type(err).__name__}: {err})") from err
    return join_pages(pages)


def join_pages(pages: list[str]) -> tuple[str, list[int]]:
    """Pages' text joined by blank lines, and each page's start offset (a blank page holds no word to start on)."""
    text, starts = "", []
    for page in pages:
        cleaned = re.sub(r"\n{3,}", "\n\n", "\n".join(line.rstrip() for line in page.split("\n"))).strip()
        if text and cleaned:
            text += "\n\n"
        starts.append(len(text))
        text += cleaned
    return text, starts


def page_of(offset: int, starts: list[int]) -> int:
    """The 1-based page holding character `offset`, given each page's start offset."""
    return bisect_right(starts, offset)


def docx_text(raw: bytes) -> str:
    """A Word document's paragraphs and tables in order: headings as `#` lines, rows as `a | b`, no images."""
    from docx import Document
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table
    from lxml.etree import XMLSyntaxError

    try:
        document = Document(io.BytesIO(raw))
    except (BadZipFile, PackageNotFoundError, XMLSyntaxError, KeyError, ValueError) as err:
        raise BadArticle("parse_error", f"is not a readable DOCX ({type(err).__name__}: {err})") from err
    blocks = []
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            blocks += [" | ".join(cell.text.strip() for cell in row.cells) for row in block.rows]
            continue
        text = block.text.strip()
        style = block.style.name if block.style is not None else ""
        level = re.fullmatch(r"Heading (\d)", style or "")
        if text and (level or style == "Title"):
            text = "#" * (int(level.group(1)) if level else 1) + " " + text
        blocks.append(text)
    return re.sub(r"\n{3,}", "\n\n", "\n\n".join(b for b in blocks if b)).strip()
