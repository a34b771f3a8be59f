#!/usr/bin/env bash
# On a CUDA machine: validate the whole path, then measure. Each part fits one 10-minute call:
# its steps' limits, plus 30 s for a step that ignores TERM, stay under 600 s.
#
#   bash benchmarks/gpu_suite.sh validate     # CUDA tests, one-epoch runs (python and torchrun/NCCL)
#   bash benchmarks/gpu_suite.sh throughput [throughput.py options]
#   bash benchmarks/gpu_suite.sh tta [time_to_accuracy.py options]
#   bash benchmarks/gpu_suite.sh dali                  # DALI loader alone: synchronous vs prefetching executor
#   bash benchmarks/gpu_suite.sh paper [reproduce.py options]   # call again until every run is finished
#
# Writes under $OUT (default ./gpu_out): suite.log and one JSON per part. DATA_ROOT (default
# /root/data, where ../shared/gpu/unpack.sh puts CIFAR-10) must hold cifar10/{train,test}.npz.
# DALI is taken from /root/site when present (see ../shared/gpu/README.md).
set -uo pipefail
part=${1:?usage: gpu_suite.sh validate|throughput|tta [options]}
shift
OUT=${OUT:-$PWD/gpu_out}
DATA_ROOT=${DATA_ROOT:-/root/data}
mkdir -p "$OUT"
[[ -d /root/site ]] && export PYTHONPATH=/root/site${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "pip install -e . failed"
log=$OUT/suite.log

step() {  # step NAME SECONDS CMD...: run with a limit, log output and exit status
  local name=$1 limit=$2 t0
  shift 2
  t0=$(date +%s)
  echo "== $name: $*" | tee -a "$log"
  timeout -k 30 "$limit" "$@" >>"$log" 2>&1  # KILL 30 s after a TERM that was not obeyed
  echo "== $name: exit $? after $(( $(date +%s) - t0 )) s" | tee -a "$log"
}

case $part in
  validate)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$log"
    rm -rf /tmp/runs/epoch-*  # a second call on a warm machine: fresh runs, not the last call's summaries
    step cuda-tests 200 python3 -m pytest -q -rs -m cuda tests
    step epoch-torchvision 150 python3 run.py configs/resnet20.yml --train.epochs=1 \
      --data.root="$DATA_ROOT" --train.run_dir=/tmp/runs/epoch-torchvision --train.progress=false \
      --loader.workers=12
    for loader in torch-gpu dali; do
      step "epoch-$loader-torchrun" 110 torchrun --nproc_per_node=1 run.py configs/resnet20.yml \
        --train.epochs=1 --data.root="$DATA_ROOT" --train.run_dir=/tmp/runs/epoch-$loader \
        --train.progress=false --loader.name=$loader
    done
    python3 - "$OUT/epoch_runs.json" "$*" <<'PY'
import json, sys, pathlib
runs = {}
for d in sorted(pathlib.Path("/tmp/runs").glob("epoch-*")):
    s = d / "summary.json"
    lines = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()] if (d / "metrics.jsonl").exists() else []
    epochs = [l for l in lines if "train_loss" in l]
    runs[d.name] = {"summary": json.loads(s.read_text()) if s.exists() else None,
                    "last_epoch": epochs[-1] if epochs else None}
json.dump({"command": "bash benchmarks/gpu_suite.sh validate", "runs": runs},
          open(sys.argv[1], "w"), indent=2)
print(json.dumps({k: (v["last_epoch"] or {}).get("images_per_s") for k, v in runs.items()}))
PY
    ;;
  throughput)
    step throughput 540 python3 benchmarks/throughput.py --data cifar10 --data-root "$DATA_ROOT" \
      --out "$OUT/throughput.json" "$@"
    tail -40 "$log"
    ;;
  tta)
    step tta 540 python3 benchmarks/time_to_accuracy.py --data-root "$DATA_ROOT" \
      --run-root "/tmp/tta-runs/$(date +%Y%m%dT%H%M%S)" --out "$OUT/time_to_accuracy.json" "$@"
    tail -30 "$log"
    ;;
  dali)
    for prefetch in 0 2 4; do
      step "dali-prefetch-$prefetch" 150 python3 benchmarks/throughput.py --depths 20 --loaders dali \
        --no-baseline --dali-prefetch "$prefetch" --out "$OUT/dali_prefetch$prefetch.json"
    done
    tail -30 "$log"
    ;;
  paper)
    # Seed-recipe runs on the DALI backend. They live in /root/paper-runs only while the machine is
    # held (back-to-back calls resume them; a new session starts afresh), so give each session runs
    # that can finish in it: e.g. --depths 20 32 44 --parallel 9. Results come back as one tar, plus
    # the final weights of runs finished since the last call (6 per call: $OUT returns 8 files, of
    # at most 16 MiB each; ResNet-1202's 78 MB do not fit and stay on the machine).
    step paper 540 python3 benchmarks/reproduce.py --data-root "$DATA_ROOT" --runs-dir /root/paper-runs \
      --out /root/paper-results --deadline 420 --grace 60 --loader.name=dali --train.checkpoint_every=5 "$@"
    tar czf "$OUT/paper_results.tgz" -C /root/paper-results . && touch /root/paper-shipped.txt
    for w in /root/paper-runs/*.pt; do
      [[ -f $w ]] || continue
      grep -qxF "$w" /root/paper-shipped.txt && continue
      (( $(stat -c %s "$w") > 16 * 1024 * 1024 )) && { echo "too large to come back: $w"; continue; }
      (( $(ls "$OUT" | wc -l) >= 8 )) && { echo "more weights next call: $w"; continue; }
      cp "$w" "$OUT/" && echo "$w" >> /root/paper-shipped.txt
    done
    tail -25 "$log"
    ;;
  *)
    echo "unknown part $part: expected validate, throughput, tta, dali or paper" >&2
    exit 2
    ;;
esac
