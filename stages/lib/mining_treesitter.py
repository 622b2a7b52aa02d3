"""Mine documented functions from TypeScript, JavaScript, Rust, Java, C and C++ with tree-sitter grammars.

Same record as Go and Python (`mining.CodeFunction`): the doc comment, markers stripped, is the instruction;
the declaration's source is the output. Which comment counts as doc in each language, and how names qualify,
is `mining_rules.RULES` (documented there). "Directly above" as for Go: no blank line between the doc and
the declaration; decorators, attributes, annotations and plain `//` comments may sit in between, and the
record's `line` is the first line of the declaration, those included.
tree-sitter recovers from syntax errors: a function inside (or holding) an ERROR node is skipped, the rest
of the file is mined, and `MinedFile.error_line` names the first error so the caller can count the file.
C/C++ have no preprocessor here, so a function whose only errors are macros before its name is kept.
"""

from __future__ import annotations

import functools
import re
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stages.lib.mining import CodeFunction, _order, block, source_lines
from stages.lib.mining_rules import COMMENTS, NOT_DOC, RULES, Rules, grammar_for, node_text, strip_generics

if TYPE_CHECKING:
    from tree_sitter import Node, Parser


@dataclass(frozen=True)
class MinedFile:
    """The documented functions of one file, and the first line tree-sitter could not parse (None if clean)."""

    functions: list[CodeFunction]
    error_line: int | None


def mine_functions(language: str, source: str, path: str, min_lines: int) -> MinedFile:
    """Documented functions of one file in `language` spanning at least `min_lines` lines."""
    rules = RULES[grammar_for(language, path)]
    root = _parser(rules.grammar).parse(source.encode("utf-8")).root_node
    lines = source_lines(source)
    found = []
    for node in _functions(root, rules):
        anchor = _anchor(node, rules)
        doc = _doc(anchor, rules)
        first = _first_attached(anchor, rules)
        line, end_line = first.start_point.row + 1, node.end_point.row + 1
        if not doc or end_line - line + 1 < min_lines or _in_error(node, rules):
            continue
        indent = lines[line - 1][: first.start_point.column]
        output = block(lines, line, end_line, indent if not indent.strip() else "")
        found.append(CodeFunction(path, _symbol(node, rules), line, end_line, language, doc, output))
    error_line = _first_error(root).start_point.row + 1 if root.has_error else None
    return MinedFile(sorted(found, key=_order), error_line)


def _first_error(root: Node) -> Node:
    """The first ERROR or MISSING node in document order, else the first flagged node with no flagged child."""
    stack = [root]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            return node
        flagged = [child for child in node.children if child.has_error]
        if not flagged:  # a grammar may flag the file rather than a node for a stray top-level token
            return node
        stack.extend(reversed(flagged))
    raise AssertionError("the root has_error, so the walk returns a node")


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
    return node.type in COMMENTS and _trails_code(node) and code is not None and code.type in rules.attached


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
        elif prev.type in COMMENTS and not _trails_code(prev):
            text = node_text(prev).rstrip()
            if text.startswith(rules.block_docs) and not text.startswith(NOT_DOC):
                return _clean_block(text) if not group else _clean_lines(group)
            if text.startswith(rules.line_docs) and not text.startswith(NOT_DOC):
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
    return node.start_point.row + node_text(node).rstrip("\n").count("\n")


def _trails_code(comment: Node) -> bool:
    """A comment on the same line as the code before it belongs to that code (`int n; /** count */`)."""
    prev = comment.prev_named_sibling  # named: an opening `{` on the same line is not code before it
    return prev is not None and prev.type not in COMMENTS and _end_row(prev) == comment.start_point.row


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
            parts.insert(0, strip_generics(name))
        parent = parent.parent
    return rules.separator.join(parts)


def _own_name(node: Node) -> str:
    name = node.child_by_field_name("name")
    if name is not None:
        return node_text(name)
    holder = _holder(node)
    if holder is not None:
        key = holder.child_by_field_name("name") or holder.child_by_field_name("property")
        if key is not None:
            return node_text(key)
    declarator = node.child_by_field_name("declarator")
    while declarator is not None and declarator.type != "function_declarator":
        # through `*`, `&` and parentheses: a reference declarator holds its inner declarator unnamed
        inner = declarator.child_by_field_name("declarator")
        declarator = inner or next((c for c in declarator.named_children if c.type.endswith("declarator")), None)
    if declarator is not None:
        inner = declarator.child_by_field_name("declarator")
        if inner is not None:
            return strip_generics(" ".join(node_text(inner).split()))
    return "<anonymous>"  # `export default function () {}`
