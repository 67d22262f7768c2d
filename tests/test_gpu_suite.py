"""bench/gpu_suite.sh, the one command of a GPU window, works before any GPU is lent: its
--cpu-smoke mode runs every step at tiny sizes and leaves each step's result in OUT as it
goes, and the summary the GPU figures will be read from (issue 31 item 6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_suite_runs_every_step_at_cpu_smoke_size(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    run = subprocess.run(["bash", "bench/gpu_suite.sh", "--cpu-smoke", str(out)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    timeline = (out / "timeline.txt").read_text()
    for step in ("throughput-64", "throughput-128", "batched-ra", "train-badnets",
                 "train-blended", "audit", "pam-rows"):
        assert f"end {step}: exit 0" in timeline, timeline
    summary = json.loads((out / "gpu_suite.json").read_text())
    assert summary["environment"]["device"] == "cpu"
    assert set(summary["engine_images_per_second"]) == {
        "train_throughput-cpu-small_cnn-b64", "train_throughput-cpu-small_cnn-b128"}
    assert all(v > 0 for v in summary["engine_images_per_second"].values())
    # the eager loop is timed beside the capture-safe step; no graph exists on a CPU
    assert all(v > 0 for v in summary["engine_eager_images_per_second"].values())
    assert not any(summary["engine_graphed"].values())
    assert summary["audit_seconds"] > 0
    (ra,) = summary["batched_ra"].values()
    assert ra["models"] == 2 and ra["sequential_seconds"] > 0 and ra["batched_seconds"] > 0
    assert ra["lmc_speedup"] > 0 and ra["qra_speedup"] > 0
    assert any(name.startswith("badnets-0-fp16.safetensors.part") for name in summary["files"])
    assert (out / "cifar10_fidelity-badnets-0-pam_smoke.md").exists()
