"""python benchmarks/convert_weights.py ...: fastcifar/bench/convert_weights.py (third-party weights -> shipped weights)."""

import sys

from fastcifar.bench.convert_weights import main

if __name__ == "__main__":
    sys.exit(main())
