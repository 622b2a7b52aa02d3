"""Mine documented functions from Go and Python source: doc comment -> instruction, code -> output.

Pure functions over source text; the `extract` stage walks the tree, reads the files and calls these.
Go is parsed with tree-sitter and read the way `go/ast` sees it (FuncDecl.Doc); Python with `ast`.
TypeScript, JavaScript, Rust, Java, C and C++ are mined by `mining_treesitter` into the same record.
"""

from __future__ import annotations

import ast
import functools
import re
import textwrap
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tree_sitter import Node, Parser

# File suffix -> language. A `.h` header is C or C++ by its content (mining_rules.header_language).
# fmt: off
LANGUAGES = {
    ".go": "go", ".py": "python",
    ".ts": "typescript", ".tsx": "typescript", ".mts": "typescript", ".cts": "typescript",
    ".js": "javascript", ".jsx": "javascript", ".mjs": "javascript", ".cjs": "javascript",
    ".rs": "rust", ".java": "java", ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp", ".hxx": "cpp",
}
# fmt: on

# https://go.dev/s/generatedcode
_GENERATED_GO = re.compile(r"^// Code generated .* DO NOT EDIT\.$")
# go/ast isDirective, applied to a `//` comment's text after the slashes when no space follows them.
_GO_DIRECTIVE = re.compile(r"^(line |extern |export |[a-z0-9]+:[a-z0-9])")
_SKIPPED_DIRS = frozenset({"vendor", "testdata", "node_modules", ".git", "__pycache__", "site-packages", ".venv"})


@dataclass(frozen=True)
class CodeFunction:
    """One documented function: its doc comment becomes the instruction, its source the output."""

    path: str
    symbol: str
    line: int
    end_line: int
    language: str
    instruction: str
    output: str


class CodeParseError(ValueError):
    """A source file that does not parse; message names path and line."""

    def __init__(self, path: str, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path = path
        self.line = line


def is_vendored(path: str) -> bool:
    """True for paths inside third-party, test-data or tool folders, which are not our code to mine."""
    parts = path.replace("\\", "/").split("/")
    return any(part in _SKIPPED_DIRS for part in parts)


def is_generated_go(source: str) -> bool:
    """True when a `// Code generated ... DO NOT EDIT.` line precedes the package clause."""
    in_block = False
    for raw in source.split("\n"):
        line = raw.removesuffix("\r")
        if _GENERATED_GO.match(line):
            return True
        stripped = line.strip()
        if in_block:
            in_block = "*/" not in stripped
        elif stripped.startswith("/*"):
            in_block = "*/" not in stripped[2:]
        elif stripped and not stripped.startswith("//"):
            return False  # the package clause: the marker only counts above it
    return False


def mine_go_functions(source: str, path: str, min_lines: int) -> list[CodeFunction]:
    """Documented Go functions and methods with a body spanning at least `min_lines` lines."""
    root = _parse_go(source, path)
    lines = _source_lines(source)
    found = []
    for node in root.named_children:
        if node.type not in ("function_declaration", "method_declaration"):
            continue
        if node.child_by_field_name("body") is None:
            continue  # declared here, implemented in assembly: there is no code to learn from
        line, end_line = node.start_point.row + 1, node.end_point.row + 1
        doc = _go_doc(node)
        if not doc or end_line - line + 1 < min_lines:
            continue
        name = node.child_by_field_name("name")
        assert name is not None and name.text is not None, "tree-sitter-go gives every func a name"
        output = _block(lines, line, end_line, indent="")
        found.append(CodeFunction(path, name.text.decode("utf-8"), line, end_line, "go", doc, output))
    return sorted(found, key=_order)


def mine_python_functions(source: str, path: str, min_lines: int) -> list[CodeFunction]:
    """Python functions and methods, at any nesting, with a docstring and at least `min_lines` lines."""
    tree = _parse_python(source, path)
    lines = _source_lines(source)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc = ast.get_docstring(node, clean=True)
        end_line = node.end_lineno
        assert end_line is not None, "ast.parse sets end_lineno on every statement"
        if not doc or end_line - node.lineno + 1 < min_lines:
            continue
        indent = lines[node.lineno - 1][: node.col_offset]
        output = _block(lines, node.lineno, end_line, indent)
        found.append(CodeFunction(path, node.name, node.lineno, end_line, "python", doc, output))
    return sorted(found, key=_order)


def _order(function: CodeFunction) -> tuple[int, str]:
    return function.line, function.symbol


def _source_lines(source: str) -> list[str]:
    # Split on "\n" only: tree-sitter and ast count rows that way, str.splitlines also splits on \f etc.
    return [line.removesuffix("\r") for line in source.split("\n")]


def _block(lines: list[str], line: int, end_line: int, indent: str) -> str:
    """Lines `line..end_line` (1-based, inclusive) with the first line's indentation removed."""
    block = lines[line - 1 : end_line]
    return "\n".join(text.removeprefix(indent) for text in block)


@functools.cache
def _go_parser() -> Parser:
    import tree_sitter_go
    from tree_sitter import Language, Parser

    return Parser(Language(tree_sitter_go.language()))


def _parse_go(source: str, path: str) -> Node:
    root = _go_parser().parse(source.encode("utf-8")).root_node
    if root.has_error:
        bad = _first_error(root)
        reason = f"missing {bad.type}" if bad.is_missing else "Go syntax error"
        raise CodeParseError(path, bad.start_point.row + 1, reason)
    return root


def _first_error(root: Node) -> Node:
    """The first ERROR or MISSING node in document order, else the first flagged node with no flagged child."""
    stack = [root]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            return node
        flagged = [child for child in node.children if child.has_error]
        if not flagged:  # tree-sitter-go flags the file, not a node, for a top-level statement like `0000`
            return node
        stack.extend(reversed(flagged))
    raise AssertionError("the root has_error, so the walk returns a node")


def _go_doc(func: Node) -> str:
    """The comment group ending on the line right above `func`, cleaned like go/ast CommentGroup.Text."""
    group: list[Node] = []
    prev = func.prev_named_sibling
    if prev is None or prev.type != "comment" or prev.end_point.row != func.start_point.row - 1:
        return ""
    while prev is not None and prev.type == "comment":
        if group and prev.end_point.row < group[-1].start_point.row - 1:
            break  # a blank line ends the comment group
        group.append(prev)
        prev = prev.prev_named_sibling
    # A comment sharing a line with the code before it is that code's line comment, not doc.
    if prev is not None and prev.type != "comment":
        code_row = prev.end_point.row
        while group and group[-1].start_point.row <= code_row:
            code_row = group.pop().end_point.row
    lines: list[str] = []
    for comment in reversed(group):
        assert comment.text is not None
        lines.extend(_go_comment_lines(comment.text.decode("utf-8")))
    return textwrap.dedent("\n".join(line.rstrip() for line in lines)).strip()


def _go_comment_lines(comment: str) -> list[str]:
    if comment.startswith("/*"):
        return comment[2:-2].split("\n")
    body = comment[2:]
    if _GO_DIRECTIVE.match(body):
        return []  # //go:noinline, //nolint:x, //line ...: tool directives, not documentation
    return [body.removeprefix(" ")]


def _parse_python(source: str, path: str) -> ast.Module:
    if "\x00" in source:
        # ast.parse raises ValueError (3.11) or SyntaxError (3.12+) without a line; name it ourselves.
        raise CodeParseError(path, source.count("\n", 0, source.index("\x00")) + 1, "null byte")
    try:
        with warnings.catch_warnings():
            # Mined code often has invalid escapes like "\d"; those warnings are not ours to show.
            warnings.simplefilter("ignore", SyntaxWarning)
            return ast.parse(source, filename=path)
    except SyntaxError as err:
        raise CodeParseError(path, err.lineno or 1, err.msg) from err
    except (RecursionError, MemoryError) as err:  # nesting deeper than the parser can hold
        raise CodeParseError(path, 1, "nested too deeply to parse") from err
