"""python benchmarks/gpu_suite.py STEP ...: fastcifar/bench/gpu_suite.py (the GPU round's steps, README: GPU suite)."""

import sys

from fastcifar.bench.gpu_suite import main

if __name__ == "__main__":
    sys.exit(main())
