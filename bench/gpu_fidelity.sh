#!/usr/bin/env bash
# The CIFAR-10 fidelity run and the GPU throughput bench, cut into calls that each fit a
# 10-minute GPU lease (checkpoints travel between calls as fp16 copies in 15 MB pieces).
# What the 2026-11-22 lease ran, one call per line (each well under 10 minutes):
#
#   bash bench/gpu_fidelity.sh throughput ARCHIVE OUT            # engine vs reference loop
#   bash bench/gpu_fidelity.sh train ARCHIVE OUT 60              # BadNets + Blended, 60 ep.
#   bash bench/gpu_fidelity.sh audit SUBSET CKPTS OUT badnets b c    # 294 s
#   bash bench/gpu_fidelity.sh audit SUBSET CKPTS OUT blended b c    # 282 s
#   bash bench/gpu_fidelity.sh audit SUBSET CKPTS OUT badnets a & \
#   bash bench/gpu_fidelity.sh audit SUBSET CKPTS OUT blended a; wait   # 187 s
#
# ARCHIVE: cifar10-jpeg.tar.gz; SUBSET: `python bench/cifar10_fidelity.py subset` (the test
# split and the 7% training draw, small enough to carry); CKPTS: the folder of the
# `*-fp16.part*` pieces that `train` wrote to OUT. Method groups (each a process, each with
# its own EP baseline; QRA transfers only within a group): a = the FT family, FP, NAD,
# FT-SAM; b = ANP, I-BAU, TSBD, EP; c = BTI-DBF, PAM; d = PAM on real triggered data (the
# oracle that separates PAM's step from the inversion). More than two processes at once
# saturate the host and slow every one of them.
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

decode() {  # the archive decoded once into /tmp/c10/{train,test}.npz
  python3 -c "import sys; sys.path.insert(0, '.'); from pathlib import Path
from bench.cifar10_fidelity import split_refs; split_refs(Path('$1').resolve(), Path('/tmp/c10'))"
  echo "decoded at $(elapsed)s" >>"$logs/timeline.txt"
}

case "$phase" in
throughput)
  archive=$2 out=$3
  decode "$archive"
  python3 bench/train_throughput.py --data npz:/tmp/c10/train.npz --epochs 2 --workers 8 \
    >"$logs/throughput.log" 2>&1
  ;;
train)
  # the two backdoors side by side (each reaches ~10,800 images/s that way: the host, not the
  # GPU, bounds one training); 60 epochs take ~280 s
  archive=$2 out=$3 epochs=${4:-60}
  decode "$archive"
  for attack in badnets blended; do
    timeout $((575 - $(elapsed))) python3 bench/cifar10_fidelity.py train --data "$archive" \
      --cache /tmp/c10 --attack "$attack" --epochs "$epochs" --half --out /tmp/ckpt \
      >"$logs/train-$attack.log" 2>&1 &
  done
  wait
  echo "trained at $(elapsed)s" >>"$logs/timeline.txt"
  for attack in badnets blended; do
    [ -f "/tmp/ckpt/$attack-0-fp16.safetensors" ] &&
      split -b 15M -d "/tmp/ckpt/$attack-0-fp16.safetensors" "$out/$attack-fp16.part"
  done
  ;;
audit)
  subset=$2 ckpts=$3 out=$4 attack=$5
  shift 5
  declare -A groups=([a]=ft,lp,ft_init,fe_tuning,fst,fp,nad,ft_sam [b]=anp,ibau,tsbd,ep
                     [c]=bti_dbf,pam [d]=pam+data=trigger)
  cat "$ckpts/$attack-fp16.part"* >"/tmp/$attack-fp16.safetensors"
  for group in "$@"; do
    timeout $((570 - $(elapsed))) python3 bench/cifar10_fidelity.py audit --data "$subset" \
      --attack "$attack" --clean "imagefolder:$(realpath "$subset")?split=train" \
      --tag "$group" --methods "${groups[$group]}" \
      --ckpt "/tmp/$attack-fp16.safetensors" >"$logs/audit-$attack-$group.log" 2>&1 &
  done
  wait
  echo "audited at $(elapsed)s" >>"$logs/timeline.txt"
  ;;
*)
  echo "unknown phase '$phase' (throughput, train or audit)" >&2
  exit 2
  ;;
esac
tar czf "$out/results-$phase.tar.gz" bench/results
