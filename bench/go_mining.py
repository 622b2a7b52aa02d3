"""Benchmark: loradag's Go mining against Go's own go/ast, on real Go repositories.

For each repository folder it runs three miners over the same tree, with the same rules (a doc comment
directly above, at least MIN_LINES lines, vendor/testdata/generated skipped):
- `goast`: loradag now, the real `extract` core (kind code, languages [go], on_bad_file skip);
- `tree_sitter`: loradag before (tree-sitter-go 0.25), its mining.py taken from git at OLD_COMMIT;
- the oracle: bench/go_oracle/main.go, a separate Go program (own walk, own reading, ast.IsGenerated).
It scores both miners' (path, symbol, line) against the oracle (recall, precision), also on the files
with build constraints, with cgo (`import "C"`), with generic functions or receivers and with Go 1.26
`new(expr)` (found by regular expressions), and times each one.

    python bench/go_mining.py /tmp/gorepos/hashicorp+nomad@<commit> /tmp/gorepos/mattn+go-sqlite3@<commit> ...

A folder is a repository's tree at a commit (`git archive <commit> | tar -x -C <folder>`; only the .go
files matter), named owner+name; the commit after `@` is recorded with the scores.

Writes bench/results/go_mining.json. Timings come from whatever machine runs it (recorded there).
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import types
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.extract import (  # noqa: E402
    BadInput,
    CodeConfig,
    ExtractConfig,
    code_skip_reason,
    decode_text,
    extract,
    input_files,
    read_inside,
)
from stages.lib import mining_go  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "go_mining.json"
ORACLE_SOURCE = ROOT / "bench" / "go_oracle" / "main.go"
OLD_COMMIT = "2765952"  # the last commit that mined Go with tree-sitter-go
MIN_LINES = 5
SUBSETS = {
    "build_constraint": re.compile(r"^//go:build ", re.M),
    "cgo": re.compile(r'^import "C"$|^import \([^)]*\n\s*"C"\s*\n', re.M),
    "generics": re.compile(r"^func (?:\w+\[|\([^)]*\w\[[^\]]+\]\))", re.M),
    "new_expr": re.compile(r"\bnew\((?:[0-9\"`-]|true\b|false\b|[A-Za-z_][\w.]*\()"),
}
Key = tuple[str, str, int]


def mine_goast(root: Path) -> tuple[dict[Key, dict], dict]:
    cfg = ExtractConfig(kind="code", root=str(root), on_bad_file="skip", code=CodeConfig(MIN_LINES, ["go"]))
    table, counts = extract(root, cfg)
    rows = table.select("path", "symbol", "line", "end_line", "instruction").iter_rows(named=True)
    return {(r["path"], r["symbol"], r["line"]): r for r in rows}, counts


def old_mining() -> types.ModuleType:
    source = subprocess.run(
        ["git", "show", f"{OLD_COMMIT}:stages/lib/mining.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    module = sys.modules["old_mining"] = types.ModuleType("old_mining")  # dataclasses look their module up
    exec(compile(source, "old_mining.py", "exec"), module.__dict__)  # noqa: S102 - our own code from git
    return module


def mine_tree_sitter(root: Path) -> tuple[dict[Key, dict], dict]:
    """What `extract` did before: the same walk and skips, then tree-sitter-go file by file."""
    old = old_mining()
    found: dict[Key, dict] = {}
    skipped: Counter[str] = Counter()
    files = input_files(root, "code", ExtractConfig(kind="code", code=CodeConfig(MIN_LINES, ["go"])))
    for path in files:
        source = path.relative_to(root).as_posix()
        try:
            raw = read_inside(path, source, root.resolve())
            reason = code_skip_reason(source, raw)
            if reason:
                skipped[reason] += 1
                continue
            for fn in old.mine_go_functions(decode_text(source, raw), source, MIN_LINES):
                found[(fn.path, fn.symbol, fn.line)] = {"end_line": fn.end_line, "instruction": fn.instruction}
        except (BadInput, old.CodeParseError) as err:
            skipped[getattr(err, "reason", "parse_error")] += 1
    return found, {"files": len(files)} | {f"skipped_{k}": v for k, v in sorted(skipped.items())}


def build_oracle(folder: Path) -> Path:
    binary = folder / "go_oracle"
    env = mining_go.go_env(mining_go.CACHE)
    subprocess.run([mining_go.go_tool(), "build", "-o", str(binary), str(ORACLE_SOURCE)], env=env, check=True)
    return binary


def run_oracle(binary: Path, root: Path) -> tuple[dict[Key, dict], dict]:
    reply = json.loads(
        subprocess.run([binary, "-min-lines", str(MIN_LINES), str(root)], capture_output=True, check=True).stdout
    )
    found = {(f["path"], f["symbol"], f["line"]): f for f in reply["functions"]}
    counts = {"files": reply["files"], "generated": reply["generated"], "parse_errors": reply["parse_errors"][:20]}
    return found, counts


def score(mined: dict[Key, dict], oracle: dict[Key, dict], paths: set[str] | None = None) -> dict:
    if paths is not None:
        mined = {k: v for k, v in mined.items() if k[0] in paths}
        oracle = {k: v for k, v in oracle.items() if k[0] in paths}
    both = mined.keys() & oracle.keys()
    result = {
        "oracle": len(oracle),
        "mined": len(mined),
        "matched": len(both),
        "recall": round(len(both) / len(oracle), 4) if oracle else None,
        "precision": round(len(both) / len(mined), 4) if mined else None,
    }
    if paths is None:
        result["end_line_equal"] = sum(mined[k]["end_line"] == oracle[k]["end_line"] for k in both)
        result["doc_text_equal"] = sum(mined[k]["instruction"] == oracle[k]["doc"] for k in both)
        result["missed_examples"] = [list(k) for k in sorted(oracle.keys() - mined.keys())[:8]]
        result["extra_examples"] = [list(k) for k in sorted(mined.keys() - oracle.keys())[:8]]
    return result


def subset_files(root: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {name: set() for name in SUBSETS}
    for path in root.rglob("*.go"):
        text = path.read_text(encoding="utf-8", errors="replace")
        for name, pattern in SUBSETS.items():
            if pattern.search(text):
                found[name].add(path.relative_to(root).as_posix())
    return found


def timed(miner: Callable[..., tuple[dict, dict]], *args: object) -> tuple[dict, dict, float]:
    start = time.perf_counter()
    found, counts = miner(*args)
    return found, counts, round(time.perf_counter() - start, 2)


def bench_repo(spec: str, oracle_binary: Path) -> dict:
    folder, _, commit = spec.partition("@")
    root = Path(folder)
    oracle, oracle_counts, oracle_s = timed(run_oracle, oracle_binary, root)
    miners = {"goast": mine_goast, "tree_sitter": mine_tree_sitter}
    results: dict[str, dict] = {}
    found: dict[str, dict[Key, dict]] = {}
    for name, miner in miners.items():
        try:
            found[name], counts, seconds = timed(miner, root)
        except ImportError as err:  # tree-sitter-go left the lock: nothing to compare with
            results[name] = {"unavailable": str(err)}
            continue
        results[name] = {"counts": counts, "seconds": seconds, "score": score(found[name], oracle)}
    subsets = {
        subset: {"files": len(paths)} | {name: score(mined, oracle, paths) for name, mined in found.items()}
        for subset, paths in subset_files(root).items()
    }
    return {
        "repo": root.name.replace("+", "/"),
        "commit": commit or None,
        "go_files": sum(1 for _ in root.rglob("*.go")),
        "oracle": oracle_counts | {"functions": len(oracle), "seconds": oracle_s},
        **results,
        "subsets": subsets,
    }


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python bench/go_mining.py REPO_FOLDER[@COMMIT] ...")
    mining_go.goast_binary()  # build (or find) loradag's program first, so no timing below includes it
    with tempfile.TemporaryDirectory() as tmp:
        oracle_binary = build_oracle(Path(tmp))
        repos = [bench_repo(spec, oracle_binary) for spec in sys.argv[1:]]
    results = {
        "min_lines": MIN_LINES,
        "key": "(path, symbol, line); symbol is the bare function or method name",
        "oracle": "bench/go_oracle/main.go: go/parser + go/ast (ParseComments), own walk, ast.IsGenerated",
        "go_version": subprocess.run([mining_go.go_tool(), "version"], capture_output=True, text=True).stdout.strip(),
        "repos": repos,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "note": "shared, loaded 2-core machine; timings are indicative",
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    for r in repos:
        scores = {name: r[name].get("score", {}) for name in ("goast", "tree_sitter")}
        print(r["repo"], {name: (s.get("recall"), s.get("precision")) for name, s in scores.items()})


if __name__ == "__main__":
    main()
