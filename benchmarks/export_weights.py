"""python benchmarks/export_weights.py ...: fastcifar/bench/export_weights.py, also `fastcifar bench export_weights` when installed."""

import sys

from fastcifar.bench.export_weights import main

if __name__ == "__main__":
    sys.exit(main())
