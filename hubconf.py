"""torch.hub entry points: torch.hub.load(REPO, "cifar10_resnet56", source="local", pretrained=True)."""

dependencies = ["torch", "torchvision", "numpy", "yaml"]

from fastcifar.hub import (  # noqa: E402, F401
    cifar10_resnet20,
    cifar10_resnet32,
    cifar10_resnet44,
    cifar10_resnet56,
    cifar10_resnet110,
    cifar10_resnet1202,
)
