"""python benchmarks/throughput.py ...: fastcifar/bench/throughput.py, also `fastcifar bench throughput` when installed."""

import sys

from fastcifar.bench.throughput import main

if __name__ == "__main__":
    sys.exit(main())
