#!/usr/bin/env python3
"""Checks the Swift benchmark package without a Swift toolchain.

    python3 scripts/check_swift.py [ROOT]

1. Syntax: parses every .swift file under swift/ with tree-sitter and the Swift
   grammar; prints file:line:column of each ERROR or MISSING node and fails on any.
   A parse is not a compile: types, overloads and availability are only checked by
   `swift build` on a Mac.
2. Raw keys: for every Swift type preceded by a `// schema: [FILE]<JSON pointer>` line,
   compares it with that object of schema/FILE (default bench-raw.schema.json, what the
   harness writes; `bench-report.schema.json#/$defs/reference_file` for the reference file
   it reads). Every object of the raw schema must have its Swift type:
   - a struct's CodingKeys raw values must equal the object's property names, and its
     non-optional stored properties must be exactly the object's `required` ones
     (synthesised Codable omits nil optionals, so optional = not required);
   - a String enum's raw values must equal the schema's `enum` list.

Requirements (pinned; other versions may name grammar nodes differently):
    pip install tree-sitter==0.26.1 tree-sitter-swift==0.7.4
Exit status 0 when both checks pass, 1 otherwise.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tree_sitter_swift
    from tree_sitter import Language, Node, Parser
except ImportError:
    sys.exit("needs: pip install tree-sitter==0.26.1 tree-sitter-swift==0.7.4")

MARKER = "// schema:"


def swift_parser() -> Parser:
    return Parser(Language(tree_sitter_swift.language()))


def syntax_problems(root: Node) -> list[tuple[int, int, str]]:
    """(line, column, what) of each ERROR and MISSING node, 1-based like compilers."""
    problems = []
    stack = [root]
    while stack:
        node = stack.pop()
        if node.is_missing:
            problems.append((node.start_point.row + 1, node.start_point.column + 1, f"missing `{node.type}`"))
        elif node.type == "ERROR":
            snippet = node.text.decode("utf-8", "replace").splitlines()[0][:60] if node.text else ""
            problems.append((node.start_point.row + 1, node.start_point.column + 1, f"syntax error near `{snippet}`"))
        # Only descend where the parser saw trouble: clean subtrees have nothing to report.
        if node.has_error:
            stack.extend(node.children)
    return sorted(problems)


@dataclass
class SwiftType:
    name: str
    kind: str  # "struct" or "enum"
    pointer: str
    line: int
    coding_keys: dict[str, str] = field(default_factory=dict)  # property -> JSON key
    stored: dict[str, bool] = field(default_factory=dict)  # property -> optional?
    raw_values: list[str] = field(default_factory=list)  # String enum cases


def text(node: Node) -> str:
    return node.text.decode("utf-8")


def child_of_type(node: Node, kind: str) -> Node | None:
    return next((c for c in node.children if c.type == kind), None)


def enum_cases(body: Node) -> list[tuple[str, str]]:
    """(case name, raw value) pairs of an enum body; the raw value defaults to the name."""
    cases = []
    for entry in (c for c in body.children if c.type == "enum_entry"):
        for child in entry.children:
            if child.type == "simple_identifier":
                cases.append((text(child), text(child)))
            elif child.type == "line_string_literal" and cases:
                value = child_of_type(child, "line_str_text")
                cases[-1] = (cases[-1][0], text(value) if value else "")
    return cases


def stored_properties(body: Node) -> dict[str, bool]:
    """Instance stored properties -> whether their type is optional."""
    props = {}
    for decl in (c for c in body.children if c.type == "property_declaration"):
        modifiers = child_of_type(decl, "modifiers")
        if modifiers and "static" in text(modifiers).split():
            continue
        if child_of_type(decl, "computed_property"):
            continue
        pattern = child_of_type(decl, "pattern")
        if pattern is None:
            continue
        annotation = child_of_type(decl, "type_annotation")
        optional = annotation is not None and child_of_type(annotation, "optional_type") is not None
        props[text(pattern)] = optional
    return props


def marked_types(root: Node, path: Path) -> list[SwiftType]:
    found = []
    siblings = root.children
    for index, node in enumerate(siblings):
        if node.type != "comment" or not text(node).startswith(MARKER):
            continue
        pointer = text(node)[len(MARKER):].strip()
        decl = next((s for s in siblings[index + 1:] if s.type != "comment"), None)
        if decl is None or decl.type != "class_declaration":
            raise SystemExit(f"{path}:{node.start_point.row + 1}: `{MARKER}` is not followed by a type")
        name = text(child_of_type(decl, "type_identifier"))
        kind = "enum" if child_of_type(decl, "enum") else "struct"
        item = SwiftType(name, kind, pointer, decl.start_point.row + 1)
        if kind == "enum":
            body = child_of_type(decl, "enum_class_body")
            item.raw_values = [raw for _, raw in enum_cases(body)] if body else []
        else:
            body = child_of_type(decl, "class_body")
            item.stored = stored_properties(body)
            for nested in (c for c in body.children if c.type == "class_declaration"):
                if text(child_of_type(nested, "type_identifier")) == "CodingKeys":
                    item.coding_keys = dict(enum_cases(child_of_type(nested, "enum_class_body")))
        found.append(item)
    return found


DEFAULT_SCHEMA = "bench-raw.schema.json"


def split_pointer(pointer: str) -> tuple[str, str]:
    """`file.json#/a/b` -> (file.json, #/a/b); a bare `#/a/b` is in the raw schema."""
    file, hash_, rest = pointer.partition("#")
    return (file or DEFAULT_SCHEMA), hash_ + rest


def resolve(schemas: dict, pointer: str):
    file, pointer = split_pointer(pointer)
    schema = schemas.get(file)
    if schema is None or not pointer.startswith("#"):
        return None
    node = schema
    for part in (p for p in pointer[1:].split("/") if p):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def check_type(item: SwiftType, schemas: dict) -> list[str]:
    target = resolve(schemas, item.pointer)
    if target is None:
        return [f"schema has no `{item.pointer}`"]
    problems = []
    if item.kind == "enum":
        expected = target.get("enum")
        if expected is None:
            return [f"`{item.pointer}` is not an enum in the schema"]
        if sorted(item.raw_values) != sorted(expected):
            problems.append(f"cases {sorted(item.raw_values)} != schema enum {sorted(expected)}")
        return problems

    properties = set(target.get("properties", {}))
    if not item.coding_keys:
        return ["has no CodingKeys (every raw struct names its JSON keys explicitly)"]
    keys = set(item.coding_keys.values())
    for key in sorted(keys - properties):
        problems.append(f"encodes `{key}`, which the schema does not define")
    for key in sorted(properties - keys):
        problems.append(f"schema property `{key}` has no CodingKey")
    for prop in sorted(set(item.stored) - set(item.coding_keys)):
        problems.append(f"stored property `{prop}` has no CodingKey")
    required = set(target.get("required", []))
    non_optional = {item.coding_keys[p] for p, optional in item.stored.items() if not optional and p in item.coding_keys}
    for key in sorted(non_optional - required):
        problems.append(f"`{key}` is always written but the schema does not require it")
    for key in sorted(required - non_optional):
        problems.append(f"schema requires `{key}` but the Swift property is optional or missing")
    return problems


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    files = sorted((root / "swift").rglob("*.swift"))
    files = [f for f in files if ".build" not in f.parts]
    if not files:
        print(f"no .swift files under {root / 'swift'}")
        return 1
    schemas = {
        name: json.loads((root / "schema" / name).read_text(encoding="utf-8"))
        for name in (DEFAULT_SCHEMA, "bench-report.schema.json")
    }
    parser = swift_parser()

    syntax_failures = 0
    types: list[tuple[Path, SwiftType]] = []
    for path in files:
        rel = path.relative_to(root)
        tree = parser.parse(path.read_bytes())
        problems = syntax_problems(tree.root_node)
        for line, column, what in problems:
            print(f"{rel}:{line}:{column}: {what}")
        syntax_failures += bool(problems)
        if not problems:
            types += [(rel, t) for t in marked_types(tree.root_node, rel)]
    print(f"syntax: {len(files) - syntax_failures}/{len(files)} files parse cleanly")

    key_failures = 0
    for rel, item in types:
        problems = check_type(item, schemas)
        for problem in problems:
            print(f"{rel}:{item.line}: {item.name} ({item.pointer}): {problem}")
        key_failures += bool(problems)
    print(f"raw keys: {len(types) - key_failures}/{len(types)} Swift types match the schema")
    pointers = {split_pointer(t.pointer) for _, t in types}
    unmatched = sorted(
        f"#/$defs/{name}"
        for name, definition in schemas[DEFAULT_SCHEMA]["$defs"].items()
        if "properties" in definition and (DEFAULT_SCHEMA, f"#/$defs/{name}") not in pointers
    )
    if unmatched:
        print(f"raw keys: {DEFAULT_SCHEMA} objects without a Swift type: {', '.join(unmatched)}")
    return 1 if syntax_failures or key_failures or unmatched else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
