"""Train a CIFAR ResNet: python run.py CONFIG [--section.key=value ...] [--resume[=auto]]

Under several GPUs or nodes: torchrun --nproc_per_node=8 run.py configs/resnet1202.yml
The same as `fastcifar train CONFIG ...` (fastcifar/cli.py).
"""

import sys

from fastcifar.cli import pipe_safe, train

if __name__ == "__main__":
    sys.exit(pipe_safe(train, sys.argv[1:], "run.py"))
