"""Backend 'dali': NVIDIA DALI does crop, flip, normalisation and random erasing.

GPU mode (loader.device gpu, or auto on CUDA): the uint8 NHWC data set is uploaded to the GPU once;
each step gathers the batch on the GPU by index (torch) and feeds it to
``fn.external_source(device="gpu")``: no image data crosses the host. CPU mode (loader.device cpu):
the same pipeline definition with ``device_id=None`` and CPU operators, fed numpy arrays, so CI
runs the real DALI code without a GPU.

The per-sample draws (crop offsets, flips, erasing rectangles) are made by
``pipelines.torch_gpu.draw`` on a CPU generator seeded with (seed, epoch, rank, step) and fed as
per-sample argument inputs (DALI wants those on the CPU; they are a few numbers per image). So DALI's
CPU and GPU modes and the torch-gpu backend on CPU make the very same draws for the same batch, the
output can be checked exactly against them, and a resumed run sees the same images.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from fastcifar.errors import ConfigError
from pipelines.base import LoaderSpec, register_loader
from pipelines.sharding import EpochPlan, index_tensor
from pipelines.torch_gpu import draw

MISSING = "loader 'dali' needs the dali extra: pip install -e '.[dali]'"


def _import_dali():
    try:
        from nvidia.dali import fn, pipeline_def, types
    except ImportError:
        raise ConfigError(MISSING) from None
    return fn, pipeline_def, types


def pipeline_device(spec: LoaderSpec) -> str:
    """'gpu' or 'cpu': where the DALI operators run."""
    wanted = spec.loader.device
    if wanted == "auto":
        wanted = "gpu" if spec.device.type == "cuda" else "cpu"
    if wanted == "gpu" and not torch.cuda.is_available():
        raise ConfigError("loader.device: 'gpu' needs CUDA, which is not available here; "
                          "use --loader.device=cpu to run the DALI pipeline on the CPU")
    return wanted


def build_pipeline(spec: LoaderSpec, device: str):
    """One definition for both devices: the operators follow the device of the fed images."""
    fn, pipeline_def, types = _import_dali()
    a, train = spec.augment, spec.train
    half = spec.dtype == torch.float16
    device_id = (spec.device.index or 0) if device == "gpu" else None
    threads = max(1, min(spec.loader.workers or 1, os.cpu_count() or 1))

    @pipeline_def(batch_size=spec.batch_size, num_threads=threads, device_id=device_id,
                  exec_async=False, exec_pipelined=False, prefetch_queue_depth=1)
    def augment():
        images = fn.external_source(name="images", device=device, layout="HWC")
        mirror = 0
        if train:
            if a.crop_padding > 0:
                start = fn.external_source(name="start")
                images = fn.slice(images, start=start, shape=[32, 32], axis_names="HW",
                                  out_of_bounds_policy="pad", fill_values=0)
            mirror = fn.external_source(name="mirror")
        out = fn.crop_mirror_normalize(
            images, mirror=mirror, mean=[m * 255 for m in a.mean], std=[s * 255 for s in a.std],
            dtype=types.FLOAT, output_layout="HWC")
        if train and a.erase_p > 0:
            anchor = fn.external_source(name="erase_anchor")
            shape = fn.external_source(name="erase_shape")
            out = fn.erase(out, anchor=anchor, shape=shape, axis_names="HW", fill_value=a.erase_value)
        # DALI 2.4's GPU erase has no float16 kernel: work in float32, cast once at the end
        return fn.cast(out, dtype=types.FLOAT16) if half else out

    pipe = augment()
    pipe.build()
    return pipe


class DaliLoader(EpochPlan):
    def __init__(self, spec: LoaderSpec):
        super().__init__(spec)
        self.device = pipeline_device(spec)
        self.pipe = build_pipeline(spec, self.device)
        from nvidia.dali.plugin.pytorch import feed_ndarray

        self.feed_ndarray = feed_ndarray
        host = torch.from_numpy(spec.data.images)
        self.images = host.to(spec.device) if self.device == "gpu" else host  # uploaded once
        self.labels = torch.from_numpy(spec.data.labels).to(spec.device)

    def _feed_draws(self, n: int, step: int) -> None:
        a = self.spec.augment
        g = torch.Generator().manual_seed(self.key(step))
        d = draw(a, n, g, "cpu")
        if a.crop_padding > 0:
            self.pipe.feed_input("start", (d.offsets - a.crop_padding).to(torch.int32).numpy())
        self.pipe.feed_input("mirror", d.flip.to(torch.int32).numpy())
        if a.erase_p > 0:
            box = d.erase_box.numpy()
            self.pipe.feed_input("erase_anchor", np.ascontiguousarray(box[:, :2]))
            self.pipe.feed_input("erase_shape", np.ascontiguousarray(box[:, 2:]))

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        """Feed one gathered uint8 NHWC batch, run the pipeline, return NHWC output on the device."""
        s = self.spec
        if self.device == "gpu":
            stream = torch.cuda.current_stream(s.device).cuda_stream
            self.pipe.feed_input("images", batch, cuda_stream=stream)
            (out,) = self.pipe.run()
            out = out.as_tensor()
            result = torch.empty(out.shape(), dtype=s.dtype if s.dtype == torch.float16 else torch.float32,
                                 device=s.device)
            self.feed_ndarray(out, result, cuda_stream=stream)
        else:
            self.pipe.feed_input("images", batch.numpy())  # numpy: a CPU source fed torch tries CUDA
            (out,) = self.pipe.run()
            result = torch.from_numpy(out.as_array()).to(s.device, non_blocking=True)
        return result.to(s.dtype)

    def __iter__(self):
        s = self.spec
        order = index_tensor(self.order(), self.images.device)
        for step in range(self.steps):
            idx = order[step * s.batch_size:(step + 1) * s.batch_size]
            if s.train:
                self._feed_draws(len(idx), step)
            images = self._run(self.images[idx]).permute(0, 3, 1, 2)  # NCHW, channels_last view
            if not s.channels_last:
                images = images.contiguous()
            yield images, self.labels[idx.to(self.labels.device)]


@register_loader("dali")
def build_dali(spec: LoaderSpec) -> DaliLoader:
    return DaliLoader(spec)
