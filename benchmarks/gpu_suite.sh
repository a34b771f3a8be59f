#!/usr/bin/env bash
# On a machine with a CUDA GPU: validate the whole path, then measure. Run from the repository root.
#
#   bash benchmarks/gpu_suite.sh validate                       # CUDA tests, one-epoch runs (python, torchrun)
#   bash benchmarks/gpu_suite.sh throughput [throughput.py options]
#   bash benchmarks/gpu_suite.sh tta [time_to_accuracy.py options]
#   bash benchmarks/gpu_suite.sh dali                           # DALI loader alone: synchronous vs prefetching
#   bash benchmarks/gpu_suite.sh paper [reproduce.py options]   # call again until every run is finished
#
# OUT (default ./gpu_out): the output folder: suite.log, one JSON per part, the paper runs' results and
# weights. DATA_ROOT (default ./data): CIFAR-10. RUNS (default ./gpu_runs): run directories, kept between
# calls. LIMIT (default 540): seconds each step may take; one that ignores SIGTERM is killed 30 s later.
# The paper part stops its runs with a checkpoint LIMIT - 120 s after it starts, so the next call resumes.
set -uo pipefail
part=${1:?usage: gpu_suite.sh validate|throughput|tta|dali|paper [options]}
shift
OUT=${OUT:-$PWD/gpu_out} DATA_ROOT=${DATA_ROOT:-$PWD/data} RUNS=${RUNS:-$PWD/gpu_runs} LIMIT=${LIMIT:-540}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1
log=$OUT/suite.log

step() {  # step NAME SECONDS CMD...: run under a time limit, log its output and exit status
  local name=$1 limit=$2 t0=$SECONDS
  shift 2
  echo "== $name: $*" | tee -a "$log"
  timeout -k 30 "$limit" "$@" >>"$log" 2>&1
  echo "== $name: exit $? after $((SECONDS - t0)) s" | tee -a "$log"
}

case $part in
  validate)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$log"
    step cuda-tests "$LIMIT" python3 -m pytest -q -rs -m cuda tests
    for loader in torchvision torch-gpu dali; do
      rm -rf "$RUNS/epoch-$loader"  # a fresh run each call, never an earlier call's summary
      step "epoch-$loader" "$LIMIT" torchrun --nproc_per_node=1 run.py configs/resnet20.yml --train.epochs=1 \
        --data.root="$DATA_ROOT" --train.run_dir="$RUNS/epoch-$loader" --train.progress=false --loader.name=$loader
      cp "$RUNS/epoch-$loader/summary.json" "$OUT/epoch-$loader.json" 2>/dev/null
    done
    ;;
  throughput)
    step throughput "$LIMIT" python3 -m benchmarks.throughput --data cifar10 --data-root "$DATA_ROOT" \
      --out "$OUT/throughput.json" "$@"
    ;;
  tta)
    step tta "$LIMIT" python3 -m benchmarks.time_to_accuracy --data-root "$DATA_ROOT" \
      --run-root "$RUNS/tta-$(date +%Y%m%dT%H%M%S)" --out "$OUT/time_to_accuracy.json" "$@"
    ;;
  dali)
    for prefetch in 0 2 4; do
      step "dali-prefetch-$prefetch" "$LIMIT" python3 -m benchmarks.throughput --depths 20 --loaders dali \
        --no-baseline --loader.dali_prefetch="$prefetch" --out "$OUT/dali_prefetch$prefetch.json"
    done
    ;;
  paper)
    step paper "$LIMIT" python3 -m benchmarks.reproduce --data-root "$DATA_ROOT" --runs-dir "$RUNS/paper" \
      --out "$OUT/paper" --deadline $((LIMIT - 120)) --grace 60 --train.checkpoint_every=5 "$@"
    mkdir -p "$OUT/paper/weights" && cp -u "$RUNS"/paper/*.pt "$OUT/paper/weights/" 2>/dev/null
    ;;
  *)
    echo "gpu_suite.sh: unknown part $part: expected validate, throughput, tta, dali or paper" >&2
    exit 2
    ;;
esac
tail -30 "$log"
