#!/usr/bin/env bash
# The CIFAR-10 fidelity run and the GPU throughput bench, cut into calls that each fit a
# 10-minute GPU lease (checkpoints travel between calls as fp16 copies in 15 MB pieces).
#
#   call 1: bash bench/gpu_fidelity.sh train ARCHIVE OUT
#           throughput bench (engine vs reference-style loop), then the BadNets and Blended
#           backdoors trained side by side (epochs: 100, or fewer when the measured speed
#           says 100 would not fit), and a smoke audit of every method on CUDA
#   call 2: bash bench/gpu_fidelity.sh audit SUBSET_ARCHIVE CKPT_DIR OUT
#           the full audit of both checkpoints (SUBSET_ARCHIVE: `cifar10_fidelity.py subset`)
#
# Results land in OUT (bench/results/*.json and logs, as one tarball, plus checkpoint pieces).
set -u
phase=$1
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
logs=bench/results/logs
mkdir -p "$logs"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  nproc; } >"$logs/env-$phase.txt" 2>&1

if [ "$phase" = train ]; then
  archive=$2 out=$3
  python3 -c "import sys; sys.path.insert(0, '.'); from pathlib import Path
from bench.cifar10_fidelity import split_refs; split_refs(Path('$archive').resolve(), Path('/tmp/c10'))"
  echo "decoded at $(elapsed)s" >>"$logs/timeline.txt"
  python3 bench/train_throughput.py --data npz:/tmp/c10/train.npz --epochs 2 --workers 8 \
    >"$logs/throughput.log" 2>&1
  echo "throughput bench done at $(elapsed)s" >>"$logs/timeline.txt"
  # epochs that fit the time left, with two trainings sharing the GPU (0.4 of one's speed)
  epochs=$(python3 -c "import json
r = json.load(open('bench/results/train_throughput-cuda-resnet18_cifar.json'))
left = 520 - $(elapsed)
print(max(10, min(100, int(left * 0.4 * r['engine_images_per_second'] / 50000))))" \
    2>/dev/null || echo 30)
  echo "training $epochs epochs from $(elapsed)s" >>"$logs/timeline.txt"
  for attack in badnets blended; do
    timeout $((560 - $(elapsed))) python3 bench/cifar10_fidelity.py train --data "$archive" \
      --cache /tmp/c10 --attack "$attack" --epochs "$epochs" --half --out /tmp/ckpt \
      >"$logs/train-$attack.log" 2>&1 &
  done
  timeout 400 python3 bench/cifar10_fidelity.py all --data "$archive" --cache /tmp/c10 \
    --attack blended --arch small_cnn --smoke --out /tmp/smoke >"$logs/smoke.log" 2>&1 &
  wait
  echo "trained at $(elapsed)s" >>"$logs/timeline.txt"
  for attack in badnets blended; do
    [ -f "/tmp/ckpt/$attack-fp16.safetensors" ] &&
      split -b 15M -d "/tmp/ckpt/$attack-fp16.safetensors" "$out/$attack-fp16.part"
  done
elif [ "$phase" = audit ]; then
  # one whole audit takes ~650 s with the two sharing the GPU (measured): more than a call,
  # so each audit runs as three method groups in parallel (each with its own EP baseline;
  # QRA transfers only within a group)
  subset=$2 ckpts=$3 out=$4
  groups="a:ft,lp,ft_init,fe_tuning,fst,fp,nad,ft_sam b:anp,ibau,tsbd,ep c:bti_dbf,pam"
  for attack in badnets blended; do
    cat "$ckpts/$attack-fp16.part"* >"/tmp/$attack-fp16.safetensors"
    for group in $groups; do
      timeout $((565 - $(elapsed))) python3 bench/cifar10_fidelity.py audit --data "$subset" \
        --attack "$attack" --clean "imagefolder:$(realpath "$subset")?split=train" \
        --tag "${group%%:*}" --methods "${group#*:}" \
        --ckpt "/tmp/$attack-fp16.safetensors" >"$logs/audit-$attack-${group%%:*}.log" 2>&1 &
    done
  done
  wait
  echo "audited at $(elapsed)s" >>"$logs/timeline.txt"
fi
tar czf "$out/results-$phase.tar.gz" bench/results
