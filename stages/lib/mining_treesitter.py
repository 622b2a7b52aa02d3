"""Mine documented functions from TypeScript, JavaScript, Rust, Java, C and C++ with tree-sitter grammars.

Same record as Go and Python (`mining.CodeFunction`): the doc comment, markers stripped, is the instruction;
the declaration's source is the output. Which comment counts as doc, per language, as its doc tool reads it:
- TypeScript / JavaScript (JSDoc, TypeDoc): a `/** */` block above a function declaration, a class or
  object-literal method (constructor, getter, setter, static, async, generator), or a `const`/`let`/`var`
  (or class field) holding an arrow function or function expression. Overload signatures, abstract and
  ambient declarations have no body and are not mined; the doc above the first overload documents the
  implementation that follows the overloads, as TypeDoc shows it.
- Rust (rustdoc): outer doc comments, `///` lines or a `/** */` block, above a `fn`, in `impl` blocks and
  trait default methods included; `//!` and `/*! */` document the enclosing module, not the function.
- Java (javadoc): a `/** */` block above a method or constructor with a body.
- C / C++ (Doxygen): a `/** */` or `/*! */` block or a run of `///` or `//!` lines above a function
  definition (C++: in classes, namespaces and templates too, and out-of-class `Type::method` definitions);
  the trailing member forms `///<`, `//!<`, `/**<` document what precedes them.
"Directly above" as for Go: no blank line between the doc and the declaration. Decorators, attributes
(`#[...]`), annotations, `export`, `pub`, `template<...>` and plain `//` comments (`// eslint-disable-line`,
`// NOLINT`) may sit in between; the record's `line` is the first line of the declaration, those included.
tree-sitter recovers from syntax errors: a function inside (or holding) an ERROR node is skipped, the rest
of the file is mined, and `MinedFile.error_line` names the first error so the caller can count the file.
C/C++ have no preprocessor here, so a function whose only errors are macros before its name is kept.
"""

from __future__ import annotations

import functools
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stages.lib.mining import CodeFunction, _block, _first_error, _order, _source_lines

if TYPE_CHECKING:
    from tree_sitter import Node, Parser


@dataclass(frozen=True)
class Rules:
    """How one language declares functions, attaches doc comments and qualifies names."""

    grammar: str
    functions: frozenset[str]  # node types that define a function (a `body` field marks a definition)
    wrappers: frozenset[str]  # parents that still belong to the declaration (`export`, `template<>`, `const x =`)
    attached: frozenset[str]  # siblings between doc and declaration (decorators, attributes)
    scopes: dict[str, Callable[[Node], str | None]]  # node type -> the name it adds to a qualified symbol
    separator: str
    block_docs: tuple[str, ...]  # openers of doc block comments
    line_docs: tuple[str, ...]  # prefixes of doc line comments


_COMMENTS = frozenset({"comment", "line_comment", "block_comment"})
_NOT_DOC = ("///<", "//!<", "/**<", "/*!<", "////", "/**/", "/***")


def _field(name: str) -> Callable[[Node], str | None]:
    def read(node: Node) -> str | None:
        child = node.child_by_field_name(name)
        return _text(child) if child is not None else None

    return read


def _object_owner(node: Node) -> str | None:
    """`const api = { get() {...} }` qualifies `get` as `api.get`; other object literals add nothing."""
    parent = node.parent
    return _field("name")(parent) if parent is not None and parent.type == "variable_declarator" else None


def _impl_type(node: Node) -> str | None:
    """`impl<T> Stack<T>` and `impl Display for Stack<T>` both name `Stack` (how a caller writes Stack::push)."""
    kind = node.child_by_field_name("type")
    while kind is not None and kind.type in ("reference_type", "pointer_type"):
        kind = kind.child_by_field_name("type")  # `impl Trait for &Stack` documents Stack's method
    return _text(kind) if kind is not None else None


_JS_SCOPES = {"class_declaration": _field("name"), "class": _field("name"), "object": _object_owner}
_TS_SCOPES = _JS_SCOPES | {"abstract_class_declaration": _field("name"), "internal_module": _field("name")}
_JAVA_CLASS = ("class_declaration", "interface_declaration", "enum_declaration", "record_declaration")
_CPP_CLASS = ("namespace_definition", "class_specifier", "struct_specifier", "union_specifier")
_JS_FUNCTIONS = frozenset(
    {"function_declaration", "generator_function_declaration", "method_definition", "arrow_function"}
    | {"function_expression", "generator_function"}
)
_JS_WRAPPERS = frozenset(
    {"export_statement", "variable_declarator", "lexical_declaration", "variable_declaration"}
    | {"field_definition", "public_field_definition"}
)


def _js(grammar: str, scopes: dict[str, Callable[[Node], str | None]]) -> Rules:
    return Rules(grammar, _JS_FUNCTIONS, _JS_WRAPPERS, frozenset({"decorator"}), scopes, ".", ("/**",), ())


_C_DOCS = (("/**", "/*!"), ("///", "//!"))
RULES = {
    "typescript": _js("typescript", _TS_SCOPES),
    "tsx": _js("tsx", _TS_SCOPES),
    "javascript": _js("javascript", _JS_SCOPES),
    "rust": Rules(
        "rust",
        frozenset({"function_item"}),
        frozenset(),
        frozenset({"attribute_item"}),
        {"impl_item": _impl_type, "trait_item": _field("name"), "mod_item": _field("name")},
        "::",
        ("/**",),
        ("///",),
    ),
    "java": Rules(
        "java",
        frozenset({"method_declaration", "constructor_declaration", "compact_constructor_declaration"}),
        frozenset(),
        frozenset(),
        dict.fromkeys(_JAVA_CLASS, _field("name")),
        ".",
        ("/**",),
        (),
    ),
    "c": Rules("c", frozenset({"function_definition"}), frozenset(), frozenset(), {}, "::", *_C_DOCS),
    "cpp": Rules(
        "cpp",
        frozenset({"function_definition"}),
        frozenset({"template_declaration"}),
        frozenset(),
        dict.fromkeys(_CPP_CLASS, _field("name")),
        "::",
        *_C_DOCS,
    ),
}

# Markers that tools write into the header of files they generate (Go's convention is used well beyond Go).
_GENERATED = re.compile(
    r"@generated\b|\bCode generated\b.*\bDO NOT EDIT\b|<auto-generated|\bautomatically generated by\b|\bDO NOT EDIT\b"
)
# C++-only syntax that makes a `.h` header C++ (as GitHub linguist decides), else it is C.
_CPP_HEADER = re.compile(
    r"^\s*(?:namespace\b|template\s*<|class\s+\w+[^;]*$|using\s+namespace\b|public:|private:|protected:)"
    r"|^\s*#\s*include\s*<(?:iostream|string|vector|memory|map|cstdint|cstddef|utility|algorithm)>",
    re.M,
)


@dataclass(frozen=True)
class MinedFile:
    """The documented functions of one file, and the first line tree-sitter could not parse (None if clean)."""

    functions: list[CodeFunction]
    error_line: int | None


def header_language(source: str) -> str:
    """`cpp` for a `.h` file with C++-only syntax (namespace, template, class, access labels), else `c`."""
    return "cpp" if _CPP_HEADER.search(source) else "c"


def is_generated(source: str, path: str) -> bool:
    """True for minified bundles and for files whose leading comments carry a generator's marker."""
    if path.endswith((".min.js", ".min.mjs", ".min.cjs")):
        return True
    for raw in source.split("\n")[:50]:
        line = raw.strip()
        if line and not line.startswith(("//", "/*", "*", "#!")):
            return False  # the first line of code: markers only count in the header above it
        if _GENERATED.search(line):
            return True
    return False


def grammar_for(language: str, path: str) -> str:
    """The tree-sitter grammar for a file: `.tsx` files need the TSX grammar (JSX inside TypeScript)."""
    return "tsx" if language == "typescript" and path.endswith(".tsx") else language


def mine_functions(language: str, source: str, path: str, min_lines: int) -> MinedFile:
    """Documented functions of one file in `language` spanning at least `min_lines` lines."""
    rules = RULES[grammar_for(language, path)]
    root = _parser(rules.grammar).parse(source.encode("utf-8")).root_node
    lines = _source_lines(source)
    found = []
    for node in _functions(root, rules):
        anchor = _anchor(node, rules)
        doc = _doc(anchor, rules)
        first = _first_attached(anchor, rules)
        line, end_line = first.start_point.row + 1, node.end_point.row + 1
        if not doc or end_line - line + 1 < min_lines or _in_error(node, rules):
            continue
        indent = lines[line - 1][: first.start_point.column]
        output = _block(lines, line, end_line, indent if not indent.strip() else "")
        found.append(CodeFunction(path, _symbol(node, rules), line, end_line, language, doc, output))
    error_line = _first_error(root).start_point.row + 1 if root.has_error else None
    return MinedFile(sorted(found, key=_order), error_line)


@functools.cache
def _parser(grammar: str) -> Parser:
    from tree_sitter_language_pack import get_parser

    return get_parser(grammar)  # type: ignore[arg-type]  # the pack types its names as a Literal


def _functions(root: Node, rules: Rules) -> list[Node]:
    """Function definitions in document order: a `body`, and for a function value a named holder."""
    found = []
    stack = [root]
    while stack:
        node = stack.pop()
        if node.type in rules.functions and node.child_by_field_name("body") is not None:
            if node.type not in ("arrow_function", "function_expression", "generator_function") or _holder(node):
                found.append(node)
        stack.extend(reversed(node.named_children))
    return found


def _holder(node: Node) -> Node | None:
    """The `const name =` declarator or class field that names a function value, if it is one."""
    parent = node.parent
    if parent is None or parent.child_by_field_name("value") != node:
        return None
    return parent if parent.type in ("variable_declarator", "field_definition", "public_field_definition") else None


def _anchor(node: Node, rules: Rules) -> Node:
    """The outermost node of the declaration: `export`, `const x =` and `template<>` belong to it."""
    anchor = node
    while anchor.parent is not None and anchor.parent.type in rules.wrappers:
        if (
            anchor.parent.type in ("lexical_declaration", "variable_declaration")
            and anchor.parent.named_child_count > 1
        ):
            break  # `const a = () => {}, b = 2`: the doc belongs to the statement, not to `a`
        anchor = anchor.parent
    return anchor


def _first_attached(anchor: Node, rules: Rules) -> Node:
    """The first of the decorators or attributes right above the declaration, else the declaration."""
    first = anchor
    prev = anchor.prev_named_sibling
    while prev is not None and _end_row(prev) >= first.start_point.row - 1:
        if _comments_attached(prev, rules):
            prev = prev.prev_named_sibling  # `#[allow(dead_code)] // unused on Windows`
        elif prev.type in rules.attached:
            first, prev = prev, prev.prev_named_sibling
        else:
            break
    return first


def _comments_attached(node: Node, rules: Rules) -> bool:
    """A comment trailing a decorator or attribute on its line: part of that attribute, not doc, not a break."""
    code = node.prev_named_sibling
    return node.type in _COMMENTS and _trails_code(node) and code is not None and code.type in rules.attached


def _doc(anchor: Node, rules: Rules) -> str:
    """The nearest doc comment above `anchor`, with no blank line and only attributes or plain comments between."""
    top = anchor.start_point.row
    prev = anchor.prev_named_sibling
    group: list[str] = []
    while prev is not None:
        end = _end_row(prev)
        if end < top - 1:
            break  # a blank line ends what can be doc
        if _comments_attached(prev, rules) and not group:
            pass  # the attribute it trails comes next
        elif (prev.type in rules.attached or _is_overload(prev)) and not group:
            top = prev.start_point.row
        elif prev.type in _COMMENTS and not _trails_code(prev):
            text = _text(prev).rstrip()
            if text.startswith(rules.block_docs) and not text.startswith(_NOT_DOC):
                return _clean_block(text) if not group else _clean_lines(group)
            if text.startswith(rules.line_docs) and not text.startswith(_NOT_DOC):
                group.insert(0, text)
            elif group:
                break  # a plain comment ends a run of `///` lines
            top = prev.start_point.row
        else:
            break
        prev = prev.prev_named_sibling
    return _clean_lines(group) if group else ""


def _is_overload(node: Node) -> bool:
    """A TypeScript overload signature: the doc above the first one documents the implementation below them."""
    if node.type == "export_statement":
        declaration = node.child_by_field_name("declaration")
        return declaration is not None and declaration.type == "function_signature"
    return node.type in ("function_signature", "method_signature")


def _end_row(node: Node) -> int:
    # Rust line comments end after their newline; count the rows of the text instead.
    return node.start_point.row + _text(node).rstrip("\n").count("\n")


def _trails_code(comment: Node) -> bool:
    """A comment on the same line as the code before it belongs to that code (`int n; /** count */`)."""
    prev = comment.prev_named_sibling  # named: an opening `{` on the same line is not code before it
    return prev is not None and prev.type not in _COMMENTS and _end_row(prev) == comment.start_point.row


def _clean_block(text: str) -> str:
    body = text[3:-2]  # `/**` or `/*!` ... `*/`
    lines = [re.sub(r"^\s*\*(?!/) ?", "", line, count=1) if i else line for i, line in enumerate(body.split("\n"))]
    first = lines[0].strip()
    rest = textwrap.dedent("\n".join(line.rstrip() for line in lines[1:]))
    return f"{first}\n{rest}".strip()


def _clean_lines(group: list[str]) -> str:
    lines = [line[3:].removeprefix(" ").rstrip() for line in group]
    return textwrap.dedent("\n".join(lines)).strip()


def _in_error(node: Node, rules: Rules) -> bool:
    if node.has_error and not _only_macro_errors(node, rules):
        return True
    parent = node.parent
    while parent is not None:
        if parent.type == "ERROR":
            return True
        parent = parent.parent
    return False


def _only_macro_errors(node: Node, rules: Rules) -> bool:
    """C/C++: the only errors are in the specifiers before the name, where a macro the parser cannot expand
    sits (`FMT_CONSTEXPR void f()`, `API_EXPORT int g()`); the name and body parsed, so the function is kept."""
    if rules.grammar not in ("c", "cpp"):
        return False
    declarator, body = node.child_by_field_name("declarator"), node.child_by_field_name("body")
    if declarator is None or body is None or declarator.has_error or body.has_error:
        return False
    return all(child.type == "ERROR" or not child.has_error for child in node.children)


def _symbol(node: Node, rules: Rules) -> str:
    """The name as the language prints it: `Class.method` (TS, JS, Java), `Type::method` (Rust, C++)."""
    parts = [_own_name(node)]
    parent = node.parent
    while parent is not None:
        namer = rules.scopes.get(parent.type)
        name = namer(parent) if namer is not None else None
        if name:
            parts.insert(0, _strip_generics(name))
        parent = parent.parent
    return rules.separator.join(parts)


def _own_name(node: Node) -> str:
    name = node.child_by_field_name("name")
    if name is not None:
        return _text(name)
    holder = _holder(node)
    if holder is not None:
        key = holder.child_by_field_name("name") or holder.child_by_field_name("property")
        if key is not None:
            return _text(key)
    declarator = node.child_by_field_name("declarator")
    while declarator is not None and declarator.type != "function_declarator":
        # through `*`, `&` and parentheses: a reference declarator holds its inner declarator unnamed
        inner = declarator.child_by_field_name("declarator")
        declarator = inner or next((c for c in declarator.named_children if c.type.endswith("declarator")), None)
    if declarator is not None:
        inner = declarator.child_by_field_name("declarator")
        if inner is not None:
            return _strip_generics(" ".join(_text(inner).split()))
    return "<anonymous>"  # `export default function () {}`


def _strip_generics(name: str) -> str:
    """`ns::Stack<T>::push` -> `ns::Stack::push`; `operator<` keeps its angle bracket."""
    if "operator" in name:
        head, _, op = name.partition("operator")
        return _strip_generics(head) + "operator" + op if head else name
    previous = None
    while previous != name:
        previous, name = name, re.sub(r"<[^<>]*>", "", name)
    return name


def _text(node: Node) -> str:
    assert node.text is not None, "nodes of a parsed tree carry their text"
    return node.text.decode("utf-8")
