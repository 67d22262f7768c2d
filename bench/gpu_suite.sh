#!/usr/bin/env bash
# One command for a 15-minute GPU window (the standing GPU rule: run it first, before
# anything else, as one device call of at most 9 minutes):
#
#   bash bench/gpu_suite.sh OUT [ARCHIVE]     # on the GPU machine ($OUT of the device call)
#   bash bench/gpu_suite.sh --cpu-smoke OUT   # every step at tiny sizes, on a CPU (a test)
#
# In order: install the wheels carried in .whl/ (the device image has no pydantic, FastAPI,
# Celery); record the environment; decode CIFAR-10 (ARCHIVE: cifar10-jpeg.tar.gz, carried
# in a git-ignored folder); the throughput pair (the engine's fit against a reference-style
# loop, batch 128 and 512, with the bf16 peak and MFU); the full-width backdoored ResNet-18s
# (BadNets -> 0 and Blended -> 0, 5%, side by side); the whole audit in one process, timed
# per stage; PAM, BTI-DBF and EP on the BadNets model (PAM also on real triggered data, the
# oracle). Every result lands in OUT as soon as it exists (PPR_BENCH_RESULTS), the fp16
# checkpoints in 15 MB pieces, and OUT/gpu_suite.json sums it up at the end, so a run cut
# off by its lease still returns what it finished. Each step has its own time budget inside
# SUITE_SECONDS (default 540).
set -u
smoke=0
if [ "${1:-}" = "--cpu-smoke" ]; then smoke=1; shift; fi
out=$(mkdir -p "$1" && cd "$1" && pwd) || { echo "usage: gpu_suite.sh [--cpu-smoke] OUT [ARCHIVE]" >&2; exit 2; }
archive=${2:-}
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PPR_BENCH_RESULTS="$out"
budget=${SUITE_SECONDS:-540}
py=${PYTHON:-python3}  # the interpreter with torch (the device image: python3)
start=$(date +%s)
left() { echo $(( budget - ($(date +%s) - start) )); }
log() { echo "[$(( $(date +%s) - start ))s] $*" | tee -a "$out/timeline.txt"; }
step() {  # step NAME SECONDS COMMAND...: run within min(SECONDS, what is left)
  local name=$1 secs=$2; shift 2
  local room; room=$(left)
  [ "$room" -le 5 ] && { log "skipped $name: no time left"; return 1; }
  [ "$secs" -gt "$room" ] && secs=$room
  log "start $name (at most ${secs}s)"
  timeout "$secs" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  log "end $name: exit $rc"
  return $rc
}

if ls .whl/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  nproc; } >"$out/env.txt" 2>&1
cache=/tmp/ppr-suite-c10
if [ $smoke = 1 ]; then
  # tiny synthetic stand-ins for CIFAR-10's splits, in the cache the benches read
  cache="$out/cache" archive="$out/none.tar.gz"
  "$py" - "$cache" <<'PY'
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, ".")
from ppr_engine import data

cache = Path(sys.argv[1])
cache.mkdir(parents=True, exist_ok=True)
for split, n, seed in (("train", 600, 0), ("test", 200, 1)):
    ds = data.make_synthetic(n, seed=seed)
    np.savez(cache / f"{split}.npz", x=ds.x.permute(0, 2, 3, 1).numpy(), y=ds.y.numpy())
PY
  arch=small_cnn epochs=1 batches="64 128" images=256 workers=0 audit_extra="--smoke"
  ra_models=2 ra_epochs=1 qra_epochs=1
  methods=ft,ep pam_methods=pam,ep clean=(--clean "synthetic:?n=800&seed=5")
else
  [ -n "$archive" ] || { echo "gpu_suite.sh: ARCHIVE (cifar10-jpeg.tar.gz) is needed" >&2; exit 2; }
  arch=resnet18_cifar epochs=${SUITE_EPOCHS:-60} batches="128 512" images="" workers=8
  ra_models=15 ra_epochs=5 qra_epochs=2
  audit_extra=""
  methods=ft,lp,ft_init,fe_tuning,fst,fp,nad,anp,ibau,ft_sam,bti_dbf,tsbd,ep,pam
  pam_methods=pam,pam+data=trigger,bti_dbf,ep clean=()
  step decode 120 "$py" -c "import sys; sys.path.insert(0, '.'); from pathlib import Path
from bench.cifar10_fidelity import split_refs; split_refs(Path('$archive').resolve(), Path('$cache'))"
fi

for batch in $batches; do
  step "throughput-$batch" 90 "$py" bench/train_throughput.py --data "npz:$cache/train.npz" \
    --arch "$arch" --batch "$batch" --epochs 1 --workers "$workers" --tag "b$batch" \
    ${images:+--images $images}
done

# RA (and QRA) against every method's model and the baseline: one after another, then batched
step batched-ra 75 "$py" bench/batched_ra.py --arch "$arch" --models "$ra_models" \
  --epochs "$ra_epochs" --qra-epochs "$qra_epochs" $audit_extra

for attack in badnets blended; do
  step "train-$attack" 330 "$py" bench/cifar10_fidelity.py train --data "$archive" \
    --cache "$cache" --arch "$arch" --attack "$attack" --epochs "$epochs" --half \
    --out /tmp/ppr-suite-ckpt $audit_extra &
done
wait
for f in /tmp/ppr-suite-ckpt/*-fp16.safetensors; do
  [ -f "$f" ] && split -b 15M -d "$f" "$out/$(basename "$f").part"
done

ckpt=/tmp/ppr-suite-ckpt/badnets-0-fp16.safetensors
if [ -f "$ckpt" ]; then
  step audit 180 "$py" bench/cifar10_fidelity.py audit --data "$archive" --cache "$cache" \
    --arch "$arch" --attack badnets --ckpt "$ckpt" --methods "$methods" --tag all \
    "${clean[@]}" $audit_extra
  step pam-rows 150 "$py" bench/cifar10_fidelity.py audit --data "$archive" --cache "$cache" \
    --arch "$arch" --attack badnets --ckpt "$ckpt" --methods "$pam_methods" --tag pam \
    "${clean[@]}" $audit_extra
fi

"$py" - "$out" "$(( $(date +%s) - start ))" <<'PY'
import json
import sys
from pathlib import Path

out, seconds = Path(sys.argv[1]), int(sys.argv[2])
found = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))
         if p.stem != "gpu_suite"}
through = {k: v for k, v in found.items() if k.startswith("train_throughput")}
audit = next((v for k, v in found.items() if k.startswith("cifar10_fidelity") and "-all"
              in k), None)
env = next(iter(found.values()), {}).get("environment", {})
summary = {"environment": env, "seconds": seconds,
           "engine_mfu": {k: v.get("engine_mfu") for k, v in through.items()},
           "engine_images_per_second": {k: v.get("engine_images_per_second")
                                        for k, v in through.items()},
           "engine_graphed": {k: v.get("engine_graphed") for k, v in through.items()},
           "engine_eager_images_per_second": {k: v.get("engine_eager_images_per_second")
                                              for k, v in through.items()},
           "audit_seconds": audit.get("audit_seconds") if audit else None,
           "batched_ra": {k: {f: v.get(f) for f in ("models", "sequential_seconds",
                                                    "batched_seconds", "speedup",
                                                    "lmc_speedup", "qra_speedup")}
                          for k, v in found.items() if k.startswith("batched_ra")},
           "files": sorted(p.name for p in out.iterdir())}
(out / "gpu_suite.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
PY
