#!/usr/bin/env bash
# On a CUDA machine, from the repository root: bash benchmarks/gpu_suite.sh validate|throughput|tta|paper [options]
# validate: CUDA tests and one-epoch runs under torchrun; the others pass options to their script; call paper
# again until every run is finished. OUT (./gpu_out): logs and results; DATA_ROOT (./data); RUNS (./gpu_runs): run
# directories, kept between calls; LIMIT (540): seconds a step may take (killed 30 s later); the paper runs stop
# with a checkpoint LIMIT - 120 s after the start, and the next call resumes them.
set -uo pipefail
part=${1:?usage: gpu_suite.sh validate|throughput|tta|paper [options]}
shift
OUT=${OUT:-$PWD/gpu_out} DATA_ROOT=${DATA_ROOT:-$PWD/data} RUNS=${RUNS:-$PWD/gpu_runs} LIMIT=${LIMIT:-540}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1
step() {  # step NAME CMD...: run under the time limit, log its output and exit status
  local name=$1 t0=$SECONDS
  shift
  echo "== $name: $*" | tee -a "$OUT/suite.log"
  timeout -k 30 "$LIMIT" "$@" >>"$OUT/suite.log" 2>&1
  echo "== $name: exit $? after $((SECONDS - t0)) s" | tee -a "$OUT/suite.log"
}
case $part in
  validate)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$OUT/suite.log"
    step cuda-tests python3 -m pytest -q -rs -m cuda tests
    for loader in torchvision torch-gpu dali; do
      rm -rf "$RUNS/epoch-$loader"  # a fresh run each call, never an earlier call's summary
      step "epoch-$loader" torchrun --nproc_per_node=1 run.py configs/resnet20.yml --train.epochs=1 \
        --train.progress=false --data.root="$DATA_ROOT" --train.run_dir="$RUNS/epoch-$loader" --loader.name=$loader
      cp "$RUNS/epoch-$loader/summary.json" "$OUT/epoch-$loader.json"
    done ;;
  throughput) step throughput python3 -m fastcifar.bench.throughput --data cifar10 --data.root="$DATA_ROOT" \
    --out "$OUT/throughput.json" "$@" ;;
  tta) step tta python3 -m fastcifar.bench.time_to_accuracy --data.root="$DATA_ROOT" --run-root "$RUNS/tta-$(date +%s)" \
    --out "$OUT/time_to_accuracy.json" "$@" ;;
  paper)
    step paper python3 -m fastcifar.bench.reproduce --data-root "$DATA_ROOT" --runs-dir "$RUNS/paper" --out "$OUT/paper" \
      --deadline $((LIMIT - 120)) --grace 60 --train.checkpoint_every=5 "$@"
    mkdir -p "$OUT/paper/weights" && cp -u "$RUNS"/paper/*.pt "$OUT/paper/weights/" ;;
  *) echo "gpu_suite.sh: unknown part $part: expected validate, throughput, tta or paper" >&2; exit 2 ;;
esac
tail -30 "$OUT/suite.log"
