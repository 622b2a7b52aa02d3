"""Mine documented functions from source code: doc comment -> instruction, code -> output.

The `extract` stage walks the tree, reads the files and hands their texts to `mine_sources`, which
dispatches by language: Python is parsed here with `ast`; Go by Go's own go/parser in `mining_go`;
TypeScript, JavaScript, Rust, Java, C and C++ by tree-sitter grammars in `mining_treesitter`.
"""

from __future__ import annotations

import ast
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

from stages.lib import mining_rules

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
        self.reason = reason


class PartialParse(CodeParseError):
    """A file mined around a syntax error (tree-sitter recovers): `functions` are those outside the error."""

    def __init__(self, path: str, line: int, reason: str, functions: list[CodeFunction]) -> None:
        super().__init__(path, line, reason)
        self.functions = functions


# A miner takes many sources (path -> text) and min_lines, and answers per path: its functions or its parse error.
Miner = Callable[[dict[str, str], int], dict[str, "list[CodeFunction] | CodeParseError"]]


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


def is_generated(path: str, source: str) -> bool:
    """True for a file a tool wrote (its language's generated-code marker, a minified bundle)."""
    if path.endswith(".go"):
        return is_generated_go(source)
    if path.endswith(".py"):
        return False  # no marker convention is checked for Python yet
    return mining_rules.is_generated(source, path)


def mine_sources(sources: dict[str, str], min_lines: int) -> dict[str, list[CodeFunction] | CodeParseError]:
    """Per source (path -> text, a suffix of LANGUAGES): its documented functions, or why it does not parse."""
    by_language: dict[str, dict[str, str]] = {}
    for path, text in sources.items():
        by_language.setdefault(language_of(path, text), {})[path] = text
    found: dict[str, list[CodeFunction] | CodeParseError] = {}
    for language, texts in by_language.items():
        found |= MINERS[language](texts, min_lines)
    return {path: found[path] for path in sources}


def language_of(path: str, source: str) -> str:
    """The mined language of a file, by its suffix (a key of LANGUAGES); a `.h` header by its content."""
    suffix = PurePosixPath(path).suffix.lower()
    return mining_rules.header_language(source) if suffix == ".h" else LANGUAGES[suffix]


def mine_python_functions(source: str, path: str, min_lines: int) -> list[CodeFunction]:
    """Python functions and methods, at any nesting, with a docstring and at least `min_lines` lines."""
    source = source.removeprefix("\ufeff")  # ast.parse refuses a BOM in a str ("invalid non-printable character")
    tree = _parse_python(source, path)
    lines = source_lines(source)
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
        output = block(lines, node.lineno, end_line, indent)
        found.append(CodeFunction(path, node.name, node.lineno, end_line, "python", doc, output))
    return sorted(found, key=_order)


def _order(function: CodeFunction) -> tuple[int, str]:
    return function.line, function.symbol


def source_lines(source: str) -> list[str]:
    # Split on "\n" only: go/token and ast count lines that way, str.splitlines also splits on \f etc.
    return [line.removesuffix("\r") for line in source.split("\n")]


def block(lines: list[str], line: int, end_line: int, indent: str) -> str:
    """Lines `line..end_line` (1-based, inclusive) with the first line's indentation removed."""
    block = lines[line - 1 : end_line]
    return "\n".join(text.removeprefix(indent) for text in block)


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


def _mine_go(sources: dict[str, str], min_lines: int) -> dict[str, list[CodeFunction] | CodeParseError]:
    from stages.lib import mining_go  # here, not at the top: mining_go imports this module's CodeFunction

    return mining_go.mine_go_sources(sources, min_lines)  # one run of the go/ast program for all Go files


def _tree_sitter(language: str) -> Miner:
    """The miner of one tree-sitter language: a file with a syntax error is mined around it (PartialParse)."""

    def mine_all(sources: dict[str, str], min_lines: int) -> dict[str, list[CodeFunction] | CodeParseError]:
        from stages.lib import mining_treesitter  # here: it imports this module's CodeFunction

        found: dict[str, list[CodeFunction] | CodeParseError] = {}
        for path, text in sources.items():
            mined = mining_treesitter.mine_functions(language, text, path, min_lines)
            if mined.error_line is None:
                found[path] = mined.functions
            else:
                found[path] = PartialParse(path, mined.error_line, "syntax error", mined.functions)
        return found

    return mine_all


def _each_file(miner: Callable[[str, str, int], list[CodeFunction]]) -> Miner:
    """A miner of many sources from a miner of one."""

    def mine_all(sources: dict[str, str], min_lines: int) -> dict[str, list[CodeFunction] | CodeParseError]:
        found: dict[str, list[CodeFunction] | CodeParseError] = {}
        for path, text in sources.items():
            try:
                found[path] = miner(text, path, min_lines)
            except CodeParseError as err:
                found[path] = err
        return found

    return mine_all


# language -> miner of many sources at once (path -> text) with min_lines: a language is one entry here
MINERS: dict[str, Miner] = {"go": _mine_go, "python": _each_file(mine_python_functions)}
MINERS |= {language: _tree_sitter(language) for language in ("typescript", "javascript", "rust", "java", "c", "cpp")}
