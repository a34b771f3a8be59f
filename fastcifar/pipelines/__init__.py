"""Loader backends by name. Every backend hands the trainer the same thing: see pipelines.base."""

from fastcifar.pipelines.base import LOADERS, Loader, LoaderSpec, build_loader, register_loader

# importing a backend registers it; heavy dependencies (DALI) are imported only when one is built
from fastcifar.pipelines import dali, torch_gpu, torchvision_backend  # noqa: E402,F401

__all__ = ["LOADERS", "Loader", "LoaderSpec", "build_loader", "register_loader"]
