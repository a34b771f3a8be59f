"""What one image costs a CIFAR ResNet: forward FLOPs, and an estimate of the bytes a training step
moves through memory. Counted on the meta device, so ResNet-1202 costs no memory or time."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from fastcifar.models import build_model

FLOPS_CONVENTION = (
    "forward FLOPs per image counted by torch.utils.flop_counter.FlopCounterMode (convolutions and the "
    "linear layer, 2 FLOPs per multiply-accumulate; BatchNorm, ReLU, pooling and the optimizer not "
    "counted); macs_per_image = forward FLOPs / 2; a training step costs 3x the forward FLOPs "
    "(backward ~= 2x forward): TFLOP/s = images/s * 6 * macs_per_image / 1e12")
BYTES_CONVENTION = (
    "an estimate, not a measurement: every layer's output (conv, BatchNorm, ReLU, shortcut pad, pool, "
    "linear) is counted 5 times at the compute dtype (written and read in forward, read again in "
    "backward, its gradient written and read), plus the weights per step amortised over the batch: "
    "read in forward and backward at the compute dtype, and in fp32 the gradient written and the SGD "
    "update reading weight, gradient and momentum and writing weight and momentum (6 x 4 bytes)")
# Peak memory bandwidth (bytes/s) by part of the device name, most specific first (vendor data sheets).
PEAK_BANDWIDTH = {"H200": 4.8e12, "H100 NVL": 3.9e12, "H100 PCIe": 2.0e12, "H100": 3.35e12,
                  "A100-SXM4-80GB": 2.039e12, "A100 80GB PCIe": 1.935e12, "A100": 1.555e12}


def count(name: str, num_classes: int = 10, shortcut: str = "A") -> dict:
    """params, macs_per_image, and activation_elements (every layer's output elements, one image)."""
    with torch.device("meta"):
        model = build_model(name, num_classes, shortcut).eval()
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel()))
             for m in model.modules() if not list(m.children()) and not isinstance(m, nn.Identity)]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 32, 32, device="meta"))
    for hook in hooks:
        hook.remove()
    return {"params": sum(p.numel() for p in model.parameters()),
            "macs_per_image": counter.get_total_flops() // 2, "activation_elements": sum(sizes)}


def train_tflops(images_per_s: float, macs_per_image: int) -> float:
    return images_per_s * 6 * macs_per_image / 1e12


def bytes_per_image(counts: dict, batch_size: int, dtype_bytes: int) -> float:
    """See BYTES_CONVENTION."""
    activations = 5 * counts["activation_elements"] * dtype_bytes
    weights = counts["params"] * (2 * dtype_bytes + 6 * 4) / batch_size
    return activations + weights


def peak_bandwidth(device_name: str) -> float | None:
    return next((bw for key, bw in PEAK_BANDWIDTH.items() if key.lower() in device_name.lower()), None)
