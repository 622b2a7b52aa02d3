"""Stage extract: markup stripping, chunk arithmetic, code mining over a tree, BYO pairs, bad input."""

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from project import copy_project

from stages.extract import SCHEMAS, ExtractConfig, extract, main
from stages.lib import mining_go
from stages.lib.articles import chunk_article, clean_article
from stages.lib.common import UserError
from stages.lib.params import ConfigError, from_dict

FIXTURES = Path(__file__).parent / "fixtures"


BOM = "\ufeff"


def config(**overrides: object) -> ExtractConfig:
    return from_dict(ExtractConfig, overrides, "extract")


# ---------------------------------------------------------------- chunk arithmetic


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def test_short_text_is_one_chunk() -> None:
    text = words(10)
    assert chunk_article(text, chunk_words=900, overlap_words=150) == [(0, len(text), 10)]


def test_windows_overlap_and_end_at_the_last_word() -> None:
    text = words(25)
    spans = chunk_article(text, chunk_words=10, overlap_words=3)
    chunks = [text[s:e].split() for s, e, _ in spans]
    assert [c[0] for c in chunks] == ["w0", "w7", "w14", "w21"]
    assert [len(c) for c in chunks] == [10, 10, 10, 4]  # the last window stops at w24
    assert chunks[0][-3:] == chunks[1][:3]  # exactly overlap_words shared
    assert chunks[-1][-1] == "w24"


def test_exact_multiple_makes_no_empty_tail() -> None:
    spans = chunk_article(words(17), chunk_words=10, overlap_words=3)
    assert [n for _, _, n in spans] == [10, 10]


def test_spans_index_the_cleaned_text() -> None:
    text = "alpha  beta\n\ngamma delta"
    assert chunk_article(text, 2, 1) == [(0, 11, 2), (7, 18, 2), (13, 24, 2)]


def test_no_words_no_chunks() -> None:
    assert chunk_article("  \n ", 10, 2) == []


# ---------------------------------------------------------------- cleaning


def test_markdown_front_matter_and_fences_are_stripped_words_kept() -> None:
    raw = "---\ntitle: T\n---\n# Heading\n\nRun it:\n\n```bash\ndvc repro\n```\n\nDone <b>now</b>.\n"
    assert clean_article(raw, ".md") == "# Heading\n\nRun it:\n\ndvc repro\n\nDone now."


def test_html_tags_scripts_and_entities_are_stripped() -> None:
    raw = (
        "<html><head><title>x</title><style>p{color:red}</style></head><body>"
        "<h1>LoRA</h1><p>Use <code>--no-deps</code> &amp; rank 16.</p><script>var a=1;</script></body></html>"
    )
    assert clean_article(raw, ".html") == "LoRA\n\nUse `--no-deps` & rank 16."


def test_text_files_keep_angle_brackets() -> None:
    assert clean_article("a <b> c\r\n", ".txt") == "a <b> c"


# ---------------------------------------------------------------- kinds over a tree


def write(root: Path, name: str, content: str | bytes) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


def test_articles_records_have_provenance_and_sorted_order(tmp_path: Path) -> None:
    write(tmp_path, "b.md", words(30))
    write(tmp_path, "a/z.txt", words(5))
    write(tmp_path, "notes.rst", words(5))  # not an article suffix
    table, counts = extract(tmp_path, config(root=str(tmp_path), chunk_words=20, overlap_words=5))
    assert table.schema == pl.Schema(SCHEMAS["articles"])
    assert table["source"].to_list() == ["a/z.txt", "b.md", "b.md"]
    assert table["chunk_index"].to_list() == [0, 0, 1]
    assert table["id"].n_unique() == 3
    assert counts["files"] == 2 and counts["records"] == 3
    again, _ = extract(tmp_path, config(root=str(tmp_path), chunk_words=20, overlap_words=5))
    assert again.equals(table)


def test_code_kind_mines_the_fixture_tree_and_counts_skips() -> None:
    root = FIXTURES / "code"
    table, counts = extract(root, config(kind="code", root=str(root)))
    assert table.schema == pl.Schema(SCHEMAS["code"])
    by_lang = table.group_by("language").len().sort("language")
    assert dict(by_lang.iter_rows()) == {"go": 8, "python": 5}
    assert "Gcd" not in table["symbol"].to_list() and "Fib" not in table["symbol"].to_list()
    assert counts["skipped_vendored"] == 2 and counts["skipped_generated"] == 1
    clamp = table.filter(pl.col("symbol") == "Clamp").row(0, named=True)
    assert (clamp["line"], clamp["end_line"], clamp["path"]) == (53, 57, "go/numbers.go")
    assert clamp["output"].startswith("func Clamp") and clamp["instruction"]


def test_code_kind_respects_languages_and_min_lines() -> None:
    root = FIXTURES / "code"
    table, _ = extract(root, config(kind="code", root=str(root), code={"languages": ["python"], "min_lines": 6}))
    assert set(table["language"]) == {"python"}
    assert "scaled" not in table["symbol"].to_list()  # exactly 5 lines


def test_code_kind_mines_the_tree_sitter_languages_it_is_given() -> None:
    root = FIXTURES / "code"
    languages = ["typescript", "javascript", "rust", "java", "c", "cpp"]
    table, counts = extract(root, config(kind="code", root=str(root), code={"languages": languages}))
    by_lang = dict(table.group_by("language").len().sort("language").iter_rows())
    assert by_lang == {"c": 4, "cpp": 6, "java": 5, "javascript": 6, "rust": 6, "typescript": 6}
    assert counts["skipped_generated"] == 1  # typescript/generated.ts
    assert counts["partially_parsed"] == 1  # typescript/partial.ts (its `add` is 4 lines: under min_lines)
    assert {"Badge", "strbuf_avail"} <= set(table["symbol"]) and "broken" not in set(table["symbol"])
    assert "go" not in by_lang and "python" not in by_lang


def test_a_header_is_mined_as_c_or_cpp_by_its_content(tmp_path: Path) -> None:
    body = "{\n  int y = x;\n  y += 1;\n  return y;\n}\n"
    write(tmp_path, "c_api.h", "/** Increments. */\nstatic inline int inc(int x)\n" + body)
    write(tmp_path, "cpp_api.h", "namespace api {\n/** Increments. */\ninline int inc(int x)\n" + body + "}\n")
    table, _ = extract(tmp_path, config(kind="code", root=str(tmp_path), code={"languages": ["cpp"]}))
    assert table.select("source", "symbol", "language").rows() == [
        ("c_api.h", "inc", "c"),
        ("cpp_api.h", "api::inc", "cpp"),
    ]
    only_c, _ = extract(tmp_path, config(kind="code", root=str(tmp_path), code={"languages": ["c"]}))
    assert only_c["source"].to_list() == ["c_api.h", "cpp_api.h"]


def test_a_bom_does_not_hide_a_generated_marker(tmp_path: Path) -> None:
    write(
        tmp_path,
        "gen.go",
        BOM
        + "// Code generated by stringer. DO NOT EDIT.\n\npackage p\n\n"
        + "// F is f.\nfunc F() {\n\t_ = 1\n\t_ = 2\n\t_ = 3\n}\n",
    )
    write(
        tmp_path, "gen.ts", BOM + "// @generated\n/** F. */\nfunction f() {\n  let a = 1;\n  a += 1;\n  return a;\n}\n"
    )
    write(tmp_path, "ok.py", 'def f(x):\n    """Doc."""\n    y = x\n    y += 1\n    return y\n')
    _, counts = extract(
        tmp_path, config(kind="code", root=str(tmp_path), code={"languages": ["go", "python", "typescript"]})
    )
    assert counts["skipped_generated"] == 2 and counts["records"] == 1


def test_broken_code_errors_with_file_and_line_or_is_skipped(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "code_broken", tmp_path / "src")
    write(tmp_path / "src", "ok.py", 'def f(x):\n    """Doc."""\n    y = x\n    y += 1\n    return y\n')
    with pytest.raises(UserError, match=r"src/broken\.go:9: does not parse as go"):
        extract(tmp_path / "src", config(kind="code", root=str(tmp_path / "src")))
    table, counts = extract(tmp_path / "src", config(kind="code", root=str(tmp_path / "src"), on_bad_file="skip"))
    assert table["symbol"].to_list() == ["f"] and counts["skipped_parse_error"] == 2


def test_go_code_of_recent_releases_is_mined_and_a_broken_file_named_or_skipped(tmp_path: Path) -> None:
    root = tmp_path / "src"
    shutil.copytree(FIXTURES / "code_go", root / "modern")
    shutil.copy(FIXTURES / "code_go_broken/broken.go", root / "modern/broken.go")
    with pytest.raises(UserError, match=r"src/modern/broken\.go:10: does not parse as go \(missing ',' in parameter"):
        extract(root, config(kind="code", root=str(root)))
    table, counts = extract(root, config(kind="code", root=str(root), on_bad_file="skip"))
    assert table.select("path", "symbol", "line").rows() == [
        ("modern/cgo.go", "Free", 12),
        ("modern/newexpr.go", "Counter", 13),
        ("modern/newexpr.go", "All", 22),
        ("modern/newexpr.go", "Put", 40),
        ("modern/newexpr.go", "Keys", 62),
        ("modern/shifted.go", "Shifted", 6),
        ("modern/sys_linux.go", "PageSize", 6),
        ("modern/sys_other.go", "PageSize", 8),
    ]
    assert counts["skipped_parse_error"] == 1 and counts["files"] == 6


def test_python_only_code_needs_no_go_toolchain(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_go() -> str:
        raise AssertionError("the Go toolchain was asked for")

    monkeypatch.setattr(mining_go, "go_tool", no_go)
    root = FIXTURES / "code"
    table, _ = extract(root, config(kind="code", root=str(root), code={"languages": ["python"]}))
    assert set(table["language"]) == {"python"} and table.height == 5


@pytest.mark.slow
def test_real_dvc_mines_go_code_and_reruns_extract_when_the_go_program_changes(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "loradag", {"extract.kind": "code", "extract.root": "tests/fixtures/code_go"})
    project.dvc("repro", "extract")  # builds the go/ast program first unless the cache holds it
    metrics = json.loads(project.read("metrics/all/extract.json"))
    assert (metrics["files"], metrics["records"]) == (5, 8)
    program = project.root / "stages/lib/goast/main.go"
    program.write_text(program.read_text() + "\n// an edit\n")
    assert "extract" in json.loads(project.dvc("status", "--json", "extract"))


def test_bad_code_files_are_reported_in_path_order_whatever_the_language(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "code_go_broken/broken.go", tmp_path / "b.go")
    (tmp_path / "a.py").write_bytes(b"x = '\xff'\n")
    with pytest.raises(UserError, match=r"a\.py:1: not UTF-8 text"):
        extract(tmp_path, config(kind="code", root=str(tmp_path)))


def test_pairs_kind_keeps_a_multi_turn_conversation_as_one_record(tmp_path: Path) -> None:
    rows = [
        {"instruction": "Summarise", "input": "some text", "output": "short"},
        {"question": "What runs the DAG?", "answer": "dvc repro"},
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "Hi?"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Port?"},
                {"role": "assistant", "content": "8000"},
            ]
        },
    ]
    write(tmp_path, "faq.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    table, counts = extract(tmp_path, config(kind="pairs", root=str(tmp_path)))
    assert table.select("line", "instruction", "input", "output").rows() == [
        (1, "Summarise", "some text", "short"),
        (2, "What runs the DAG?", "", "dvc repro"),
        (3, "Port?", "", "8000"),  # the last turn is the pair; the earlier turns are its history
    ]
    assert table["history"].to_list()[:2] == ["", ""]
    assert json.loads(table["history"][2]) == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello."},
    ]
    assert counts["records"] == 3


def test_malformed_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, "p.jsonl", '{"question": "Q?", "answer": "A"}\n{"question": "no answer"}\n{oops\n')
    with pytest.raises(UserError, match=r"p\.jsonl:2: malformed pair: 'answer' must be a non-empty string"):
        extract(tmp_path, config(kind="pairs", root=str(tmp_path)))
    table, counts = extract(tmp_path, config(kind="pairs", root=str(tmp_path), on_bad_file="skip"))
    assert table.height == 1 and counts["skipped_bad_line"] == 2


@pytest.mark.parametrize(
    ("content", "reason", "message"),
    [
        (b"caf\xe9 latte\n", "not_utf8", r"bad\.md:1: not UTF-8 text \(byte 0xe9\)"),
        (b"\x89PNG\r\n\x1a\n\0\0\0", "not_utf8", r"bad\.md: looks binary"),
        (b"  \n\n", "empty", r"bad\.md: file is empty"),
        (b"---\ntitle: x\n---\n", "empty", r"bad\.md: no text left after stripping markup"),
    ],
)
def test_bad_article_errors_or_skips(tmp_path: Path, content: bytes, reason: str, message: str) -> None:
    write(tmp_path, "good.md", words(5))
    write(tmp_path, "bad.md", content)
    with pytest.raises(UserError, match=message):
        extract(tmp_path, config(root=str(tmp_path)))
    table, counts = extract(tmp_path, config(root=str(tmp_path), on_bad_file="skip"))
    assert table["source"].to_list() == ["good.md"] and counts[f"skipped_{reason}"] == 1


def test_config_rejects_bad_windows_and_keys() -> None:
    with pytest.raises(ConfigError, match=r"extract.overlap_words must be in \[0, chunk_words=100\), got 100"):
        config(chunk_words=100, overlap_words=100)
    with pytest.raises(ConfigError, match="extract.kind must be one of articles, code, pairs"):
        config(kind="pdf")
    with pytest.raises(
        ConfigError, match=r"extract.code.languages must be among \['c', 'cpp', 'go', 'java', .*got 'cobol'"
    ):
        config(code={"languages": ["cobol"]})


def test_main_writes_nothing_when_input_is_bad(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "params.yaml", "extract:\n  root: raw\n")
    write(tmp_path, "raw/a.md", words(50))
    main(Path("params.yaml"))
    first = pl.read_parquet("data/extract/records.parquet")
    assert first.height == 1 and json.loads(Path("metrics/extract.json").read_text())["records"] == 1
    write(tmp_path, "raw/b.md", b"\xff\xfe")
    with pytest.raises(UserError, match="raw/b.md"):
        main(Path("params.yaml"))
    assert pl.read_parquet("data/extract/records.parquet").equals(first)
    assert sorted(p.name for p in Path("data/extract").iterdir()) == ["records.parquet"]


# ---------------------------------------------------------------- symlinks and byte-order marks


def test_a_symlink_leading_outside_the_root_is_refused_or_skipped(tmp_path: Path) -> None:
    root, outside = tmp_path / "raw", tmp_path / "private"
    write(outside, "shadow.md", "root secret hash")
    write(root, "good.md", words(5))
    (root / "leak.md").symlink_to(outside / "shadow.md")
    (root / "etc").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UserError, match=r"raw/etc: is a symlink to .*/private, outside extract\.root"):
        extract(root, config(root=str(root)))
    table, counts = extract(root, config(root=str(root), on_bad_file="skip"))
    assert table["source"].to_list() == ["good.md"] and counts["skipped_outside_root"] == 2
    assert not any("secret" in text for text in table["text"])


def test_a_file_symlink_outside_the_root_is_named_with_its_target(tmp_path: Path) -> None:
    write(tmp_path / "private", "shadow.md", "root secret hash")
    write(tmp_path / "raw", "good.md", words(5))
    (tmp_path / "raw" / "leak.md").symlink_to(tmp_path / "private" / "shadow.md")
    with pytest.raises(UserError, match=r"raw/leak\.md: is a symlink to .*/private/shadow\.md, outside extract\.root"):
        extract(tmp_path / "raw", config(root=str(tmp_path / "raw")))


def test_a_symlink_that_stays_inside_the_root_is_read(tmp_path: Path) -> None:
    write(tmp_path, "docs/a.md", words(5))
    (tmp_path / "alias.md").symlink_to(tmp_path / "docs" / "a.md")
    table, counts = extract(tmp_path, config(root=str(tmp_path)))
    assert table["source"].to_list() == ["alias.md", "docs/a.md"] and counts["skipped_outside_root"] == 0


def test_a_bom_does_not_keep_markdown_front_matter(tmp_path: Path) -> None:
    write(tmp_path, "a.md", BOM + "---\ntitle: Secret title\n---\nBody words here.\n")
    table, _ = extract(tmp_path, config(root=str(tmp_path)))
    assert table["text"].to_list() == ["Body words here."]


def test_a_bom_python_file_is_mined(tmp_path: Path) -> None:
    write(tmp_path, "m.py", BOM + 'def f(x):\n    """Doc."""\n    y = x\n    y += 1\n    return y\n')
    table, _ = extract(tmp_path, config(kind="code", root=str(tmp_path)))
    assert table["symbol"].to_list() == ["f"]


def test_a_bom_jsonl_file_parses(tmp_path: Path) -> None:
    write(tmp_path, "p.jsonl", BOM + '{"question": "Q?", "answer": "A"}\n')
    table, _ = extract(tmp_path, config(kind="pairs", root=str(tmp_path)))
    assert table.select("instruction", "output").rows() == [("Q?", "A")]


# ---------------------------------------------------------------- hostile files: named, or skipped and counted


def test_a_jsonl_line_nested_200000_deep_is_a_bad_line_not_a_traceback(tmp_path: Path) -> None:
    write(tmp_path, "p.jsonl", '{"question": "Q?", "answer": "A"}\n' + "[" * 200_000 + "]" * 200_000 + "\n")
    with pytest.raises(UserError, match=r"p\.jsonl:2: malformed pair: nested too deeply"):
        extract(tmp_path, config(kind="pairs", root=str(tmp_path)))
    table, counts = extract(tmp_path, config(kind="pairs", root=str(tmp_path), on_bad_file="skip"))
    assert table.height == 1 and counts["skipped_bad_line"] == 1


def test_an_unreadable_file_is_named_or_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "good.md", words(5))
    write(tmp_path, "locked.md", words(5))
    read_bytes = Path.read_bytes

    def denied(self: Path) -> bytes:  # as root no chmod can refuse a read, so the refusal is simulated
        if self.name == "locked.md":
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(UserError, match=r"locked\.md: cannot be read \(Permission denied\)"):
        extract(tmp_path, config(root=str(tmp_path)))
    table, counts = extract(tmp_path, config(root=str(tmp_path), on_bad_file="skip"))
    assert table["source"].to_list() == ["good.md"] and counts["skipped_unreadable"] == 1
