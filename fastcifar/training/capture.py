"""Capturing a CUDA graph: shared by the whole-step graph (graph.py) and the eval graph
(engine.Evaluator), and importing neither."""

from __future__ import annotations

import torch

# "thread_local": a pinned-memory allocation by the torchvision DataLoader's pin-memory thread during
# capture would, in the default "global" mode, invalidate the capture (and poison that thread)
CAPTURE_MODE = "thread_local"


def capture(fn, warmup: int = 3):
    """-> (graph, output): fn run `warmup` times on a side stream (autotuning, lazy
    initialisation and compilation happen outside the capture), then captured once. The graph
    has not run yet: replay it to get output."""
    current = torch.cuda.current_stream()
    side = torch.cuda.Stream()
    side.wait_stream(current)
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    current.wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode=CAPTURE_MODE):
        out = fn()
    return graph, out

