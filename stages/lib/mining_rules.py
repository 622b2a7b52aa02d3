"""Per-language rules for mining_treesitter: which nodes are functions, which comments are doc, how names qualify.

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
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tree_sitter import Node


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


COMMENTS = frozenset({"comment", "line_comment", "block_comment"})
NOT_DOC = ("///<", "//!<", "/**<", "/*!<", "////", "/**/", "/***")


def _field(name: str) -> Callable[[Node], str | None]:
    def read(node: Node) -> str | None:
        child = node.child_by_field_name(name)
        return node_text(child) if child is not None else None

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
    return node_text(kind) if kind is not None else None


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


def strip_generics(name: str) -> str:
    """`ns::Stack<T>::push` -> `ns::Stack::push`; `operator<` keeps its angle bracket."""
    if "operator" in name:
        head, _, op = name.partition("operator")
        return strip_generics(head) + "operator" + op if head else name
    previous = None
    while previous != name:
        previous, name = name, re.sub(r"<[^<>]*>", "", name)
    return name


def node_text(node: Node) -> str:
    assert node.text is not None, "nodes of a parsed tree carry their text"
    return node.text.decode("utf-8")
