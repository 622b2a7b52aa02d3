"""Tests for stages/lib/articles.py: markdown links reduced to text, PDF and DOCX read, BOM and front matter."""

import io
import struct
import zlib
from pathlib import Path

import pytest

from stages.extract import ExtractConfig, extract
from stages.generate import GenerateConfig, generate_pairs
from stages.lib.articles import clean_article, join_pages, page_of, reduce_links
from stages.lib.common import UserError

BOM = "\ufeff"
LINKS_MD = """---
title: Links
---
# Serving the adapter

Install the [Great Expectations](https://greatexpectations.io/docs "GX docs") package before you run `dvc repro`.
The [Data Version Control][dvc] documentation explains the pipeline file in 12 sections.
Read the [Hugging Face PEFT] guide for the 4 adapter types that vLLM Server can load.
![The DAG of Loradag Pipeline](img/dag.png) shows every stage, and ![](img/spacer.gif) nothing else.
Questions go to <https://github.com/loradag/loradag/issues> or <a href="https://x.dev">the Loradag Forum</a>.
[![Build Status](https://ci.example/badge.svg)](https://ci.example/loradag) reports the 3 nightly jobs.

[dvc]: https://dvc.org/doc "DVC"
[hugging face peft]: <https://huggingface.co/docs/peft>
"""


def config(**overrides: object) -> ExtractConfig:
    return ExtractConfig(**overrides)  # type: ignore[arg-type]


# --- markdown links ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("see [the docs](https://x.dev/a) now", "see the docs now"),
        ('see [the docs](https://x.dev/a "Title") now', "see the docs now"),
        ("see [Lisp](https://en.wikipedia.org/wiki/Lisp_(language)) now", "see Lisp now"),
        ("see [the docs](<a url with spaces>) now", "see the docs now"),
        ("a ![diagram of the DAG](img/dag.png) here", "a diagram of the DAG here"),
        ("a ![](img/spacer.gif) here", "a  here"),
        ("[![Build](https://ci/b.svg)](https://ci/job)", "Build"),
        ("the [guide][g] says\n\n[g]: https://x.dev/guide", "the guide says\n\n"),
        ("the [Guide] says\n[guide]: https://x.dev/guide 'G'\n", "the Guide says\n"),
        ("an array [0, 1] stays", "an array [0, 1] stays"),
        ("mail <ops@example.com> or <https://x.dev/a?b=1>", "mail ops@example.com or https://x.dev/a?b=1"),
        (r"escaped \[not a link](x) stays", r"escaped \[not a link](x) stays"),
    ],
)
def test_reduce_links_keeps_the_text_a_reader_sees(markdown: str, expected: str) -> None:
    assert reduce_links(markdown) == expected


def test_markdown_article_keeps_link_text_and_drops_urls_definitions_and_html_anchors() -> None:
    text = clean_article(LINKS_MD, ".md")
    assert "](" not in text and "[" not in text and "dvc.org" not in text and "title:" not in text
    assert "Install the Great Expectations package before you run `dvc repro`." in text
    assert "The Data Version Control documentation explains" in text
    assert "Questions go to https://github.com/loradag/loradag/issues or the Loradag Forum." in text
    assert text.endswith("Build Status reports the 3 nightly jobs.")


def test_text_files_keep_their_brackets() -> None:
    assert clean_article("see [the docs](https://x.dev)\n", ".txt") == "see [the docs](https://x.dev)"


def test_extractive_questions_never_show_link_markup(tmp_path: Path) -> None:
    (tmp_path / "links.md").write_text(LINKS_MD, encoding="utf-8")
    records, _ = extract(tmp_path, config(root=str(tmp_path)))
    pairs, _ = generate_pairs(records, GenerateConfig(pairs_per_chunk=10), None)
    questions = pairs["question"].to_list()
    assert len(questions) >= 5
    assert not [q for q in questions if "[____]" in q or "](" in q or "][" in q or "![" in q]
    answers = set(pairs["answer"])
    assert {"Great Expectations", "Data Version Control", "Hugging Face PEFT"} <= answers
    assert not {"img/dag.png", "img/spacer.gif"} & answers


# --- a BOM never hides front matter ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a.md", "a.txt", "a.html"])
def test_front_matter_after_a_bom_is_stripped(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes((BOM + "---\ntitle: Secret title\n---\nBody words here.\n").encode("utf-8"))
    table, _ = extract(tmp_path, config(root=str(tmp_path)))
    assert table["text"].to_list() == ["Body words here."]


# --- PDF -------------------------------------------------------------------------------------------------


def make_pdf(pages: list[str], password: str | None = None) -> bytes:
    """A PDF whose pages show `pages` in Helvetica, one text line per line (pypdf writes it)."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    font = DictionaryObject({NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1")})
    font[NameObject("/BaseFont")] = NameObject("/Helvetica")
    font_ref = writer._add_object(font)
    for text in pages:
        page = writer.add_blank_page(612, 792)
        lines = text.split("\n") if text else []
        ops = "".join(f"BT /F1 12 Tf 72 {720 - 16 * i} Td ({line}) Tj ET\n" for i, line in enumerate(lines))
        stream = DecodedStreamObject()
        stream.set_data(ops.encode("latin-1"))
        page[NameObject("/Contents")] = writer._add_object(stream)
        fonts = DictionaryObject({NameObject("/F1"): font_ref})
        page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): fonts})
    if password is not None:
        writer.encrypt(password)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_pdf_pages_become_chunks_that_record_their_page(tmp_path: Path) -> None:
    pages = ["Alpha beta gamma delta.\nEpsilon zeta.", "", "Eta theta iota kappa."]
    (tmp_path / "paper.pdf").write_bytes(make_pdf(pages))
    table, counts = extract(tmp_path, config(root=str(tmp_path), chunk_words=4, overlap_words=0))
    assert table["text"].to_list() == ["Alpha beta gamma delta.", "Epsilon zeta.\n\nEta theta", "iota kappa."]
    assert table["page"].to_list() == [1, 1, 3]  # a chunk's page is where it starts; page 2 is blank
    assert counts["files"] == 1


def test_markdown_chunks_have_no_page(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("Some words here.\n", encoding="utf-8")
    table, _ = extract(tmp_path, config(root=str(tmp_path)))
    assert table["page"].to_list() == [None]


def test_page_offsets_skip_blank_pages() -> None:
    text, starts = join_pages(["one two", "  \n", "three"])
    assert text == "one two\n\nthree" and starts == [0, 7, 9]
    assert [page_of(offset, starts) for offset in (0, 6, 9, 13)] == [1, 1, 3, 3]


@pytest.mark.parametrize(
    ("content", "reason", "message"),
    [
        (make_pdf(["Secret words."], password="hunter2"), "unreadable", "an encrypted PDF; decrypt it"),
        (b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog", "parse_error", "is not a readable PDF"),
        (make_pdf([""]), "empty", "a scanned PDF has no text layer"),
    ],
)
def test_a_bad_pdf_is_named_or_skipped(tmp_path: Path, content: bytes, reason: str, message: str) -> None:
    (tmp_path / "bad.pdf").write_bytes(content)
    (tmp_path / "ok.md").write_text("Good words.\n", encoding="utf-8")
    with pytest.raises(UserError, match=rf"bad\.pdf: .*{message}"):
        extract(tmp_path, config(root=str(tmp_path)))
    table, counts = extract(tmp_path, config(root=str(tmp_path), on_bad_file="skip"))
    assert table["source"].to_list() == ["ok.md"] and counts[f"skipped_{reason}"] == 1


def test_a_pdf_encrypted_with_an_empty_password_is_read(tmp_path: Path) -> None:
    (tmp_path / "open.pdf").write_bytes(make_pdf(["Readable words."], password=""))
    table, _ = extract(tmp_path, config(root=str(tmp_path)))
    assert table["text"].to_list() == ["Readable words."]


# --- DOCX ------------------------------------------------------------------------------------------------


def tiny_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)  # 1x1, 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\x00")) + chunk(b"IEND", b"")
    )


def make_docx() -> bytes:
    from docx import Document

    document = Document()
    document.add_heading("Release notes", level=1)
    document.add_paragraph("Version 2 adds the retrieval gate.")
    document.add_picture(io.BytesIO(tiny_png()))
    table = document.add_table(rows=2, cols=2)
    for row, cells in zip(table.rows, [("key", "default"), ("top_k", "2")], strict=True):
        for cell, value in zip(row.cells, cells, strict=True):
            cell.text = value
    document.add_heading("Upgrading", level=2)
    document.add_paragraph("Rerun dvc repro after the upgrade.")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def test_docx_paragraphs_headings_and_tables_are_read_in_order_without_images(tmp_path: Path) -> None:
    (tmp_path / "notes.docx").write_bytes(make_docx())
    table, _ = extract(tmp_path, config(root=str(tmp_path)))
    assert table["text"].to_list() == [
        "# Release notes\n\nVersion 2 adds the retrieval gate.\n\nkey | default\n\ntop_k | 2\n\n"
        "## Upgrading\n\nRerun dvc repro after the upgrade."
    ]
    assert table["page"].to_list() == [None]


def test_a_broken_docx_is_named_or_skipped(tmp_path: Path) -> None:
    (tmp_path / "bad.docx").write_bytes(make_docx()[:300])
    (tmp_path / "ok.txt").write_text("Good words.\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.docx: is not a readable DOCX"):
        extract(tmp_path, config(root=str(tmp_path)))
    _, counts = extract(tmp_path, config(root=str(tmp_path), on_bad_file="skip"))
    assert counts["skipped_parse_error"] == 1 and counts["records"] == 1
