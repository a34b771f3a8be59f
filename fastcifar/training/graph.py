"""Whole-step CUDA graphs: forward, label-smoothed loss, backward and the fused SGD update of one
batch captured once and replayed, so a step costs one launch instead of hundreds. These nets are
small enough (16-64 channels) that at batch 128 launch overhead, not arithmetic, sets the pace.

What capture needs, and where it is provided:
- fixed addresses: the batch is copied into static input buffers; gradients are allocated by the
  captured backward (set to None before capture) and rewritten, not accumulated, at each replay;
- the learning rate as a device tensor read by the fused kernel (TrainStep.lr), so the schedule
  changes it with an in-place fill and no recapture;
- optimizer state that exists before capture: the warm-up steps create the momentum buffers, and
  load_state_dict copies a loaded state into them instead of replacing them;
- no host syncs inside: GradScaler (fp16) is refused by resolve_runtime; autocast runs with its
  cast cache off, since cached casts would be those made at capture time.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from fastcifar.training.capture import CAPTURE_MODE
from fastcifar.training.engine import Runtime, TrainStep, require_fused, require_no_grad_scaler


class GraphedTrainStep(TrainStep):
    """TrainStep whose step is a replayed CUDA graph. The first `warmup` calls are ordinary
    steps on a side stream (real updates, on the real batches), the next captures and replays.

    Batches must keep one shape (train loaders drop the last partial batch); a new shape is
    captured afresh. With capture=False the same static-buffer path runs without a graph, on any
    device: the CPU tests compare it with the plain step."""

    WARMUP = 3

    def __init__(self, train_model: nn.Module, optimizer: torch.optim.Optimizer, runtime: Runtime,
                 label_smoothing: float = 0.0, capture: bool = True):
        require_no_grad_scaler(runtime.amp_dtype)  # resolve_runtime's checks, for a step built directly
        fused = all(g.get("fused") for g in optimizer.param_groups)
        if capture and not fused:
            require_fused("foreach" if optimizer.param_groups[0].get("foreach") else "for-loop")
        super().__init__(train_model, optimizer, runtime, label_smoothing, tensor_lr=fused or None)
        self.capture_enabled = capture
        self.graph = None
        self.warmed = 0  # warm-up steps run since the last (re)capture was asked for
        self.static_images = self.static_labels = self.static_loss = None
        self._side = None  # the warm-up stream, one for all warm-up steps

    def _static_inputs(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        same = (self.static_images is not None and images.shape == self.static_images.shape
                and images.dtype == self.static_images.dtype and labels.shape == self.static_labels.shape)
        if not same:
            # clone keeps the memory format (channels_last) of what the loader hands over
            self.static_images, self.static_labels = images.clone(), labels.clone()
            self.reset()
        else:
            self.static_images.copy_(images)
            self.static_labels.copy_(labels)

    def reset(self) -> None:
        """Drop the graph: the next calls warm up and capture again."""
        self.graph, self.static_loss, self.warmed = None, None, 0

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self._static_inputs(images, labels)
        if not self.capture_enabled:
            return self.step(self.static_images, self.static_labels, autocast_cache=False)
        if self.graph is None:
            if self.warmed < self.WARMUP:
                return self._warmup_step()
            self._capture()
        self.graph.replay()
        # a copy: the next replay overwrites static_loss while the caller may still hold this one
        return self.static_loss.clone()

    def _warmup_step(self) -> torch.Tensor:
        current = torch.cuda.current_stream()
        side = self._side = self._side or torch.cuda.Stream()
        side.wait_stream(current)
        with torch.cuda.stream(side):
            loss = self.step(self.static_images, self.static_labels, autocast_cache=False)
        current.wait_stream(side)
        loss.record_stream(current)  # made on `side`, used and freed on the current stream
        self.warmed += 1
        return loss

    def _capture(self) -> None:
        # gradients allocated inside the capture live in the graph's pool at fixed addresses
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode=CAPTURE_MODE):
            with self.runtime.autocast(cache=False):
                loss = self.criterion(self.model(self.static_images), self.static_labels)
            loss.backward()
            self.optimizer.step()
        self.graph, self.static_loss = graph, loss.detach()

    def load_state_dict(self, state: dict) -> None:
        """Load into a captured step without recapture: the loaded momentum buffers are copied
        into the ones the graph reads. Before capture this is an ordinary load."""
        if self.graph is None:
            return super().load_state_dict(state)
        held = {p: s["momentum_buffer"] for p, s in self.optimizer.state.items()
                if s.get("momentum_buffer") is not None}
        super().load_state_dict(state)
        for p, s in self.optimizer.state.items():
            loaded = s.get("momentum_buffer")
            if p not in held or loaded is None or loaded.shape != held[p].shape:
                self.reset()  # a state the graph was not captured with: capture again
                return
            held[p].copy_(loaded)
            s["momentum_buffer"] = held[p]
        if set(held) != set(self.optimizer.state):
            self.reset()


def build_train_step(train_model: nn.Module, optimizer: torch.optim.Optimizer, runtime: Runtime,
                     label_smoothing: float = 0.0) -> TrainStep:
    """The step runtime asks for: a whole-step CUDA graph (train.cuda_graph) or the plain step."""
    if runtime.cuda_graph:
        return GraphedTrainStep(train_model, optimizer, runtime, label_smoothing)
    return TrainStep(train_model, optimizer, runtime, label_smoothing)
