"""The CIFAR ResNets of He et al. 2016, section 4.2, and a registry of them by name.

3x3 conv (16) -> 3 stages of n basic blocks (16, 32, 64 channels) -> global average pool ->
linear; depth = 6n + 2. Shortcut A (the paper's CIFAR choice) subsamples and zero-pads the
channels and has no parameters; shortcut B is a 1x1 conv + BN projection.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastcifar.errors import ConfigError

PAPER_DEPTHS = (20, 32, 44, 56, 110, 1202)


class PadShortcut(nn.Module):
    """Option A: stride-2 subsampling and zero channels on both sides, no parameters."""

    def __init__(self, extra_channels: int):
        super().__init__()
        self.pad = extra_channels // 2

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = PadShortcut(planes - in_planes)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, shortcut: str = "A"):
        super().__init__()
        n = blocks_per_stage(depth)
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        if x.dim() == 3:  # one unbatched CHW image -> its logits, as torch's conv layers allow
            return self.forward(x.unsqueeze(0)).squeeze(0)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.fc(out)


def blocks_per_stage(depth: int) -> int:
    """n for depth 6n+2: the one place a depth is checked (models, config, benchmark options)."""
    if depth < 8 or (depth - 2) % 6:
        raise ConfigError(f"depth {depth} is not 6n+2 with n >= 1 (e.g. {', '.join(map(str, PAPER_DEPTHS))})")
    return (depth - 2) // 6


MODELS = {f"resnet{d}": d for d in PAPER_DEPTHS}
_NAME = re.compile(r"resnet(\d+)$")


def check_model_name(name: str) -> int:
    """The depth for a registry name; resnet<6n+2> is accepted for any n >= 1."""
    if name in MODELS:
        return MODELS[name]
    match = _NAME.match(name)
    reason = "unknown model"
    if match:
        try:
            blocks_per_stage(int(match.group(1)))
            return int(match.group(1))
        except ConfigError as e:
            reason = str(e)
    raise ConfigError(f"model.name: {name!r}: {reason} (valid: {', '.join(MODELS)}, or resnet<6n+2> such as resnet8)")


def build_model(name: str, num_classes: int = 10, shortcut: str = "A") -> CifarResNet:
    if shortcut not in ("A", "B"):
        raise ConfigError(f"model.shortcut: {shortcut!r} is not one of A, B")
    return CifarResNet(check_model_name(name), num_classes, shortcut)
