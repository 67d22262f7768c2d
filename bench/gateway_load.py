"""Gateway load: how many status reads the API serves, how 200 pacing pollers fare, and how
much memory concurrent large uploads cost. Records figures; asserts nothing.

    python bench/gateway_load.py [--workers 1] [--label after] [--root DIR]

It starts `ppr serve --no-worker` (embedded: SQLite, filesystem queue) in a fresh data
directory, submits one job (it stays queued: there is no worker), then measures
1. closed-loop throughput with `wrk` (apt package `wrk`): `GET /healthz` and
   `GET /v1/jobs/{id}`, 64 and 200 connections, 15 s each;
2. 200 connections each polling the job once a second for 60 s (wrk with a delay script;
   p50/p90/p99/max, errors, requests served), with independent phases (1 s +- 10%) and in
   lockstep (exactly 1 s after each answer: a worst case);
3. four concurrent 1 GiB uploads (refused at the end: they are not checkpoints), sampling
   the gateway's resident memory (all its processes) every 0.1 s.
`--root` runs the server from another checkout (e.g. a worktree of an older commit) to
measure "before". Results go to bench/results/gateway_load-<label>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, data: Path, port: int, workers: int,
                 extra: list[str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PPR_")}
    # capacity is measured, so the per-principal rate limit (one principal here) is off
    env.update(PPR_DATA_DIR=str(data), PYTHONUNBUFFERED="1", PPR_READ_RATE_PER_S="0")
    args = [sys.executable, "-m", "ppr_cli.main", "serve", "--port", str(port), "--no-worker"]
    if workers > 1:
        args += ["--workers", str(workers)]
    args += extra
    proc = subprocess.Popen(args, cwd=root, env=env, stdout=open(data / "serve.log", "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    raise SystemExit(f"server did not start: {(data / 'serve.log').read_text()[-2000:]}")


def submit_job(url: str, data: Path) -> str:
    sys.path.insert(0, str(HERE.parent))
    from ppr_engine import models
    from ppr_engine.checkpoint import save_model

    ckpt = data / "small.safetensors"
    save_model(models.create("small_cnn", 10), ckpt)
    spec = {"model": {"arch": "small_cnn", "num_classes": 10},
            "data": {"clean": "synthetic:?n=300&seed=2", "test": "synthetic:?n=300&seed=1"},
            "triggers": [{"attack": "badnets", "target": 0}],
            "plan": {"methods": [{"name": "ft", "epochs": 1}]}}
    r = httpx.post(f"{url}/v1/audits", files={"checkpoint": (ckpt.name, ckpt.read_bytes())},
                   data={"spec": json.dumps(spec)}, timeout=60)
    r.raise_for_status()
    return r.json()["id"]


def wrk(url: str, connections: int, seconds: int) -> dict:
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = wrk_latencies(out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"connections": connections, "seconds": seconds, "requests_per_s": rps,
            "latency_p50": lat.get("50%"), "latency_p99": lat.get("99%"),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errors.group(1).strip() if errors else None}


PACE_LUA = """
-- each connection polls about once a second: one CI job per connection; the first request
-- of each is spread over a second. JITTER = 0: exactly 1 s after each answer, so one stall
-- lines the connections up and they arrive together from then on (a worst case); 0.1:
-- 1 s +- 10%, independent phases, as independent CI jobs poll.
local JITTER = JITTER_VALUE
local first = true
function delay()
  if first then first = false; return math.random(0, 1000) end
  return math.floor(1000 * (1 + JITTER * (2 * math.random() - 1)))
end
"""


def wrk_latencies(out: str) -> dict[str, str]:
    return {p: m.group(1) for p in ("50%", "90%", "99%")
            if (m := re.search(rf"\s{re.escape(p)}\s+([\d.]+\w+)", out))}


def pollers(url: str, clients: int, seconds: int, folder: Path, jitter: float) -> dict:
    """`clients` connections, each polling once a second (wrk with a delay script: the
    load generator is C, so on a 2-core machine it takes little from the server)."""
    script = folder / "pace.lua"
    script.write_text(PACE_LUA.replace("JITTER_VALUE", str(jitter)))
    out = subprocess.run(["wrk", "-t2", f"-c{clients}", f"-d{seconds}s", "--latency",
                          "--timeout", "10s", "-s", str(script), url], capture_output=True,
                         text=True, timeout=seconds + 60).stdout
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    lat = wrk_latencies(out)
    mx = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out)
    return {"clients": clients, "seconds": seconds, "jitter": jitter,
            "offered_about": clients * seconds,
            "served": total, "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errors.group(1).strip() if errors else None,
            "latency_p50": lat.get("50%"), "latency_p90": lat.get("90%"),
            "latency_p99": lat.get("99%"), "latency_max": mx.group(1) if mx else None}


def rss_kib(pid: int) -> int:
    """Resident memory of `pid` and its children (KiB)."""
    total = 0
    pids = [pid] + [int(p) for p in subprocess.run(
        ["pgrep", "-g", str(os.getpgid(pid))], capture_output=True, text=True).stdout.split()
        if int(p) != pid]
    for p in pids:
        try:
            text = Path(f"/proc/{p}/status").read_text()
            total += int(re.search(r"VmRSS:\s+(\d+)", text).group(1))
        except (OSError, AttributeError):
            pass
    return total


def uploads(url: str, proc: subprocess.Popen, count: int, size: int, folder: Path) -> dict:
    blob = folder / "big.bin"
    with open(blob, "wb") as fh:
        fh.truncate(size)  # sparse: zeros, never a valid checkpoint
    base = rss_kib(proc.pid)
    peak = base
    codes: list[int] = []

    def send() -> None:
        with open(blob, "rb") as fh:
            r = httpx.post(f"{url}/v1/audits", files={"checkpoint": ("big.pt", fh)},
                           data={"spec": "{}"}, timeout=600)
            codes.append(r.status_code)

    import threading

    threads = [threading.Thread(target=send) for _ in range(count)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, rss_kib(proc.pid))
        time.sleep(0.1)
    blob.unlink()
    return {"uploads": count, "bytes_each": size, "seconds": round(time.monotonic() - t0, 1),
            "status_codes": sorted(codes), "rss_before_mib": round(base / 1024, 1),
            "rss_peak_mib": round(peak / 1024, 1),
            "rss_growth_mib": round((peak - base) / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--label", default="current")
    ap.add_argument("--root", type=Path, default=HERE.parent)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--poll-seconds", type=int, default=60)
    ap.add_argument("--upload-gib", type=float, default=1.0)
    ap.add_argument("--serve-arg", action="append", default=[],
                    help="extra `ppr serve` argument, e.g. --serve-arg=--no-access-log")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, port = Path(tmp), free_port()
        proc = start_server(args.root.resolve(), data, port, args.workers, args.serve_arg)
        url = f"http://127.0.0.1:{port}"
        try:
            job = submit_job(url, data)
            result = {"label": args.label, "workers": args.workers,
                      "serve_args": args.serve_arg,
                      "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                               cwd=args.root, capture_output=True,
                                               text=True).stdout.strip(),
                      "machine": f"{platform.machine()}, {os.cpu_count()} cores "
                                 "(server, wrk and pollers share them)",
                      "closed_loop": {}}
            for name, path in (("healthz", "/healthz"), ("job_status", f"/v1/jobs/{job}")):
                result["closed_loop"][name] = [wrk(url + path, c, args.seconds)
                                               for c in (64, 200)]
                print(name, result["closed_loop"][name], flush=True)
            result["pollers"] = [pollers(f"{url}/v1/jobs/{job}", 200, args.poll_seconds,
                                         data, jitter) for jitter in (0.1, 0.0)]
            print("pollers", result["pollers"], flush=True)
            result["uploads"] = uploads(url, proc, 4, int(args.upload_gib * (1 << 30)), data)
            print("uploads", result["uploads"], flush=True)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"gateway_load-{args.label}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
