"""Helpers for benchmarks: environment capture and result files (figures, not tests)."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

# PPR_BENCH_RESULTS redirects every result file (bench/gpu_suite.sh writes into its OUT, so
# a run cut off by its lease still returns what it finished)
RESULTS = Path(os.environ.get("PPR_BENCH_RESULTS") or Path(__file__).resolve().parent
               / "results")


def environment() -> dict:
    """What the figures were measured on."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    return {"torch": torch.__version__, "device": dev,
            "gpu": torch.cuda.get_device_name(0) if dev == "cuda" else None,
            "cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def write(name: str, payload: dict) -> Path:
    """Write `payload` plus the environment to bench/results/NAME.json and print it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    body = {"environment": environment(), **payload}
    out.write_text(json.dumps(body, indent=2) + "\n")
    print(json.dumps(body, indent=2))
    return out
