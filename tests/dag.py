"""What dvc.yaml must say about the code: the project modules each stage runs, derived from the imports."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINT = "stages/lib/cli.py"  # every stage's cmd is `loradag <stage>`


def imported_modules(path: Path) -> set[str]:
    """Project modules (paths under stages/) that a module imports anywhere, lazy imports in functions too."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            file = Path(*name.split(".")).with_suffix(".py")
            if name.split(".")[0] == "stages" and (REPO / file).is_file():
                found.add(file.as_posix())
    return found


def run_files(path: Path) -> set[str]:
    """Non-Python files a module runs, named in its module-level `RUNS = (...)` relative to its folder."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["RUNS"]:
            return {(path.parent / name).relative_to(REPO).as_posix() for name in ast.literal_eval(node.value)}
    return set()


def stage_modules(stage: str) -> set[str]:
    """The entry point, the stage's module, every project module they import (transitively) and the files those run."""
    todo, seen = [ENTRY_POINT, f"stages/{stage}.py"], set()
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(imported_modules(REPO / module))
    return seen | {file for module in seen for file in run_files(REPO / module)}
