"""Benchmark: a no-op `dvc repro` and `dvc status` on the default project must take under 3 s.

Run after a full `dvc repro`: `python bench/noop.py`. Writes bench/results/noop.json (median and max of
several runs, the target, and whether it was met). Timings are recorded here, never asserted in tests.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "noop.json"
TARGET_S = 3.0
RUNS = 5


def timed(cmd: list[str]) -> tuple[float, str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, out.stdout


def main() -> None:
    dvc = [sys.executable, "-m", "dvc"]
    _, status = timed([*dvc, "status"])
    if "up to date" not in status:
        sys.exit(f"bench/noop.py: the pipeline is not up to date; run `dvc repro` first.\n{status}")
    results = {}
    for name, cmd in {"dvc_repro_noop": [*dvc, "repro"], "dvc_status": [*dvc, "status"]}.items():
        times = [timed(cmd)[0] for _ in range(RUNS)]
        results[name] = {
            "median_s": round(statistics.median(times), 3),
            "max_s": round(max(times), 3),
            "runs": RUNS,
            "target_s": TARGET_S,
            "met": max(times) < TARGET_S,
        }
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
