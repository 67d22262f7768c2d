"""API fuzzing at scale: the schemathesis test of tests/service/test_fuzz.py with many more
examples per operation; records how many cases ran and whether any failed.

    python bench/api_fuzz.py [--examples 100]

Writes bench/results/api_fuzz.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=100, help="examples per operation")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        count_file = Path(tmp) / "cases.txt"
        env = {**os.environ, "PPR_FUZZ_EXAMPLES": str(args.examples),
               "PPR_FUZZ_COUNT_FILE": str(count_file)}
        t0 = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "tests/service/test_fuzz.py"], cwd=HERE.parent, env=env,
                             capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        cases = count_file.read_text().splitlines() if count_file.exists() else []
    per_op = collections.Counter(cases)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr[-500:]
    result = {"examples_per_operation": args.examples, "cases": len(cases),
              "method_path_pairs": len(per_op),  # undeclared methods included
              "per_operation": dict(sorted(per_op.items())),
              "pytest_exit_code": run.returncode, "pytest_summary": summary,
              "seconds": round(seconds, 1)}
    (HERE / "results").mkdir(exist_ok=True)
    out = HERE / "results" / "api_fuzz.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "per_operation"}, indent=2))
    if run.returncode != 0:
        print(run.stdout[-6000:])


if __name__ == "__main__":
    main()
