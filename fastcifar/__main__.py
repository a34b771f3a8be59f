"""python -m fastcifar ...: the `fastcifar` command."""

import sys

from fastcifar.cli import main

sys.exit(main())
