"""Tests for stages/lib/mining_treesitter.py and mining_rules.py on real-world-shaped fixtures under tests/fixtures/code/."""

# ruff: noqa: E501  (the expected doc texts read best as one literal each)

from pathlib import Path

import pytest

from stages.lib.mining import CodeFunction
from stages.lib.mining_rules import header_language, is_generated
from stages.lib.mining_treesitter import mine_functions

CODE = Path(__file__).parent / "fixtures" / "code"
JAVA = "java/src/main/java/dev/loradag/ratelimit/TokenBucket.java"


def mine(language: str, relative: str, min_lines: int = 5) -> list[CodeFunction]:
    result = mine_functions(language, (CODE / relative).read_text(encoding="utf-8"), relative, min_lines)
    assert result.error_line is None, f"{relative} should parse cleanly"
    return result.functions


def tuples(functions: list[CodeFunction]) -> list[tuple[str, int, int, str]]:
    return [(f.symbol, f.line, f.end_line, f.instruction) for f in functions]


def by_symbol(functions: list[CodeFunction]) -> dict[str, CodeFunction]:
    return {f.symbol: f for f in functions}


# fmt: off
EXPECTED = {
    ("typescript", "typescript/cache.ts"): [
        ("LruCache.constructor", 36, 41, "Creates an empty cache.\n@param options - size limit and time to live"),
        ("LruCache.get", 49, 57, "Returns the value for `key` and marks it as recently used.\n\n@param key - the key to look up\n@returns the cached value, or `undefined` when absent"),
        ("LruCache.fetch", 69, 77, "Loads a missing value through `loader` and caches it.\n@param key - the key to fetch\n@param loader - called once per missing key"),
        ("parseSize", 96, 102, 'Parses a size such as `"64"` or `64` into an entry count.\n@param value - a number or a decimal string'),
        ("memoize", 110, 115, "Builds a cache whose loader is memoised per key.\n@param max - maximum number of entries\n@returns a function that loads through the cache"),
    ],
    ("typescript", "typescript/Badge.tsx"): [
        ("Badge", 7, 12, "Shows a count in a pill, or nothing when the count is zero.\n@param props.count - how many unread items"),
    ],
    ("javascript", "javascript/debounce.js"): [
        ("debounce", 16, 22, "Creates a debounced function that delays invoking `func` until after\n`wait` milliseconds have elapsed since the last time it was invoked.\n\n@param {Function} func The function to debounce.\n@param {number} [wait=100] The number of milliseconds to delay.\n@returns {Function} Returns the new debounced function.\n@example\nwindow.addEventListener('resize', debounce(layout, 150));"),
        ("throttle", 29, 38, "Invokes `func` at most once per `wait` milliseconds.\n@param {Function} func The function to throttle.\n@param {number} wait The throttle window in milliseconds."),
        ("CallQueue.constructor", 45, 49, "@param {number} limit maximum pending calls before the oldest is dropped"),
        ("CallQueue.flush", 55, 61, "Runs every pending call and empties the queue.\n@returns {number} how many calls ran"),
        ("CallQueue.[Symbol.iterator]", 66, 71, "Yields the pending calls without running them."),
        ("timing.elapsed", 80, 86, "Milliseconds between two `performance.now()` readings, rounded.\n@param {number} start\n@param {number} end"),
    ],
    ("rust", "rust/ring.rs"): [
        ("Ring::with_capacity", 28, 36, "Creates an empty ring with room for `capacity` elements.\n\n# Panics\n\nPanics if `capacity` is zero.\n\n# Examples\n\n```\nlet ring: Ring<u8> = Ring::with_capacity(4);\nassert!(ring.is_empty());\n```"),
        ("Ring::push", 39, 50, "Appends `item`, returning the element it overwrote, if any."),
        ("Ring::pop", 53, 61, "Removes and returns the oldest element."),
        ("Ring::fmt", 80, 91, "Formats the elements oldest first, separated by commas."),
        ("Drain::drain_all", 100, 106, "Takes every element, oldest first."),
        ("tests::push_overwrites_oldest", 114, 120, "Overwriting drops the oldest element."),
    ],
    ("java", JAVA): [
        ("TokenBucket.TokenBucket", 31, 38, "Creates a full bucket.\n\n@param capacity the maximum number of stored tokens\n@param clock the clock that refills the bucket\n@throws IllegalArgumentException if {@code capacity} is not positive"),
        ("TokenBucket.tryAcquire", 46, 54, "Takes one token for {@code key} if one is available.\n\n@param key the caller asking for a permit\n@return {@code true} when a token was taken"),
        ("TokenBucket.call", 57, 62, "Runs {@code action} once a token is available, waiting as needed."),
        ("TokenBucket.Stats.denialRate", 81, 87, "The share of requests that were denied.\n\n@return a ratio in [0, 1], or 0 before any request"),
        ("Limiter.acquireOrThrow", 101, 105, "Takes a permit or throws.\n\n@throws IllegalStateException when no permit is available"),
    ],
    ("c", "c/strbuf.h"): [
        ("strbuf_avail", 22, 27, "\\brief Bytes that can be appended without a reallocation.\n\\param sb the buffer"),
    ],
    ("c", "c/strbuf.c"): [
        ("strbuf_grow", 15, 28, "@brief Makes room for at least @p extra more bytes.\n\nAborts when the size would overflow, as git's strbuf_grow does."),
        ("strbuf_add", 32, 38, "Appends `len` bytes of `data` to `sb`.\nThe result stays NUL-terminated."),
        ("strbuf_release", 41, 48, "Releases the buffer and resets it to STRBUF_INIT."),
    ],
    ("cpp", "cpp/matrix.hpp"): [
        ("linalg::Matrix::Matrix", 14, 19, "Creates a `rows` x `cols` matrix filled with `fill`."),
        ("linalg::Matrix::at", 25, 30, "Element access with bounds checking.\n@throws std::out_of_range when (r, c) is outside the matrix"),
        ("linalg::Matrix::transposed", 49, 58, "Returns the transpose as a new matrix."),
        ("linalg::detail::dot", 65, 72, "Dot product of row `r` of `a` and column `c` of `b`."),
    ],
    ("cpp", "cpp/matrix.cpp"): [
        ("linalg::operator<<", 10, 17, "\\brief Prints `m` row by row, separating columns with spaces."),
        ("identity", 24, 30, "Identity of size n, for tests and examples."),
    ],
}
# fmt: on


@pytest.mark.parametrize(("language", "relative"), list(EXPECTED))
def test_fixture_yields_exactly_the_documented_functions(language: str, relative: str) -> None:
    assert tuples(mine(language, relative)) == EXPECTED[(language, relative)]


@pytest.mark.parametrize(("language", "relative"), list(EXPECTED))
def test_every_record_spans_its_output_and_names_its_language(language: str, relative: str) -> None:
    for function in mine(language, relative):
        assert function.path == relative and function.language == language
        assert len(function.output.split("\n")) == function.end_line - function.line + 1
        assert function.output.rstrip(",;").endswith("}")


def test_decorators_and_attributes_open_the_output_and_methods_are_dedented() -> None:
    get = by_symbol(mine("typescript", "typescript/cache.ts"))["LruCache.get"]
    assert get.output.split("\n")[:2] == ["@logged", "public get(key: K): V | undefined {"]
    assert get.output.split("\n")[-1] == "}"
    push = by_symbol(mine("rust", "rust/ring.rs"))["Ring::push"]
    assert push.output.split("\n")[:2] == ["#[inline]", "pub fn push(&mut self, item: T) -> Option<T> {"]
    acquire = by_symbol(mine("java", JAVA))["TokenBucket.tryAcquire"]
    assert acquire.output.split("\n")[:2] == ["@Override", "public synchronized boolean tryAcquire(K key) {"]


def test_export_const_and_template_lines_belong_to_the_declaration() -> None:
    memoize = by_symbol(mine("typescript", "typescript/cache.ts"))["memoize"]
    assert memoize.output.startswith("export const memoize = <K, V>(max: number, loader: Loader<K, V>) => {")
    assert memoize.output.endswith("};")
    transposed = by_symbol(mine("cpp", "cpp/matrix.hpp"))["linalg::Matrix::transposed"]
    assert transposed.output.split("\n")[:2] == ["template <typename T>", "Matrix<T> Matrix<T>::transposed() const {"]


def test_undocumented_blank_line_separated_plain_commented_and_bodiless_functions_are_skipped() -> None:
    symbols = {f.symbol for f in mine("typescript", "typescript/cache.ts", min_lines=1)}
    assert "LruCache.set" not in symbols  # no doc
    assert "defaultSize" not in symbols  # a blank line between doc and function
    assert "logged" not in symbols
    assert "LruCache.size" in symbols  # a getter: only too short at min_lines 5
    rust = {f.symbol for f in mine("rust", "rust/ring.rs", min_lines=1)}
    assert "Ring::clear" not in rust  # `//` is a plain comment
    assert "Drain::take_one" not in rust  # a trait method without a body
    assert "Ring::is_empty" in rust
    c = {f.symbol for f in mine("c", "c/strbuf.c", min_lines=1)}
    assert "strbuf_count" not in c  # `/* */` is not Doxygen
    java = {f.symbol for f in mine("java", JAVA, min_lines=1)}
    assert "TokenBucket.refill" not in java and "Limiter.tryAcquire" not in java


def test_trailing_member_docs_and_declarations_are_not_mined() -> None:
    # `///<`, `//!<`, `/**<` document the member before them; a declaration has no code to learn from
    cpp = mine("cpp", "cpp/matrix.hpp", min_lines=1)
    assert "linalg::Matrix::rows" in {f.symbol for f in cpp}  # `//!` is Doxygen's Qt-style line doc
    assert all("number of" not in f.instruction for f in cpp)
    assert [f.symbol for f in mine("c", "c/strbuf.h", min_lines=1)] == ["strbuf_avail"]


def test_rust_inner_doc_comments_document_the_module_not_the_function() -> None:
    source = "//! Module docs.\nfn first() {\n    let x = 1;\n}\n"
    assert mine_functions("rust", source, "lib.rs", 1).functions == []
    source = "/// Outer docs.\n/// Second line.\n// plain\n#[inline]\nfn first() {\n    let x = 1;\n}\n"
    (only,) = mine_functions("rust", source, "lib.rs", 1).functions
    assert (only.line, only.instruction) == (4, "Outer docs.\nSecond line.")


def test_a_comment_trailing_an_attribute_keeps_the_doc_above_it() -> None:
    # ripgrep tests/util.rs: `#[allow(dead_code)] // unused on Windows` between the doc and the fn
    source = "/// Try to create a file.\n#[allow(dead_code)] // unused on Windows\npub fn try_create() {\n    x();\n}\n"
    (only,) = mine_functions("rust", source, "util.rs", 1).functions
    assert (only.line, only.end_line, only.instruction) == (2, 5, "Try to create a file.")
    assert only.output.startswith("#[allow(dead_code)] // unused on Windows\npub fn try_create() {")


def test_a_comment_trailing_code_on_its_line_is_not_the_next_functions_doc() -> None:
    source = "int n = 0; /** counts calls */\nint next(void) {\n  return ++n;\n}\n"
    assert mine_functions("c", source, "n.c", 1).functions == []


def test_min_lines_counts_from_the_first_attached_line_to_the_closing_line() -> None:
    assert "Ring::with_capacity" in {f.symbol for f in mine("rust", "rust/ring.rs", min_lines=9)}
    assert "Ring::with_capacity" not in {f.symbol for f in mine("rust", "rust/ring.rs", min_lines=10)}


def test_a_syntax_error_skips_the_function_around_it_and_reports_its_line() -> None:
    source = (CODE / "typescript/partial.ts").read_text(encoding="utf-8")
    result = mine_functions("typescript", source, "typescript/partial.ts", 1)
    assert [f.symbol for f in result.functions] == ["add"]
    assert result.error_line == 14


def test_an_unexpanded_macro_before_a_cpp_function_does_not_hide_it() -> None:
    # fmt's style: tree-sitter cannot expand FMT_CONSTEXPR and puts an ERROR before the name; name and body parse
    source = "/// Free function.\nFMT_CONSTEXPR inline int f(int x) {\n  return x;\n}\n"
    result = mine_functions("cpp", source, "base.h", 1)
    assert [(f.symbol, f.line, f.end_line) for f in result.functions] == [("f", 2, 4)]
    assert result.error_line == 2
    broken_body = "/// Broken body.\nint g(int x) {\n  return x +;\n}\n"
    assert mine_functions("cpp", broken_body, "g.cc", 1).functions == []


def test_crlf_source_gives_clean_doc_and_output() -> None:
    source = (CODE / "rust/ring.rs").read_text(encoding="utf-8").replace("\n", "\r\n")
    pop = by_symbol(mine_functions("rust", source, "ring.rs", 5).functions)["Ring::pop"]
    assert pop.instruction == "Removes and returns the oldest element."
    assert "\r" not in pop.output and pop.output.startswith("pub fn pop(&mut self) -> Option<T> {")


@pytest.mark.parametrize(
    ("source", "path", "expected"),
    [
        ("// @generated by protoc-gen-ts. DO NOT EDIT.\nexport const x = 1;\n", "a.ts", True),
        ("// Code generated by sqlc. DO NOT EDIT.\npackage x;\n", "A.java", True),
        ("/* automatically generated by rust-bindgen 0.69.1 */\npub const X: u32 = 1;\n", "b.rs", True),
        ("/*\n * <auto-generated>\n */\nint x;\n", "g.c", True),
        ("/* eslint-disable */\nexport const x = 1;\n", "a.ts", False),
        ("export const x = 1;\n// @generated\n", "a.ts", False),  # below the first code line
        ("var a=1;", "vendor.min.js", True),
    ],
)
def test_is_generated_reads_the_header_comments(source: str, path: str, expected: bool) -> None:
    assert is_generated(source, path) is expected


def test_generated_fixture_is_detected() -> None:
    assert is_generated((CODE / "typescript/generated.ts").read_text(encoding="utf-8"), "typescript/generated.ts")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("#include <stddef.h>\nstruct s { int a; };\nint f(void);\n", "c"),
        ("namespace fs {\nint f();\n}\n", "cpp"),
        ("template <typename T>\nT id(T x);\n", "cpp"),
        ("class Widget {\n public:\n  int w;\n};\n", "cpp"),
        ("#include <vector>\n", "cpp"),
    ],
)
def test_header_language_follows_cpp_only_syntax(source: str, expected: str) -> None:
    assert header_language(source) == expected
