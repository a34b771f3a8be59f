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

``loader.dali_prefetch`` picks the executor: 0 runs each batch synchronously when the trainer asks
for it; N > 0 uses DALI's asynchronous pipelined executor with N batches fed and scheduled ahead,
so DALI's host-side work for the next batches overlaps the training step on this one.
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


def build_pipeline(spec: LoaderSpec, device: str, prefetch: int = 0):
    """One definition for both devices: the operators follow the device of the fed images."""
    fn, pipeline_def, types = _import_dali()
    a, train = spec.augment, spec.train
    half = spec.dtype == torch.float16
    device_id = (spec.device.index or 0) if device == "gpu" else None
    threads = max(1, min(spec.loader.workers or 1, os.cpu_count() or 1))

    ahead = prefetch > 0
    @pipeline_def(batch_size=spec.batch_size, num_threads=threads, device_id=device_id,
                  exec_async=ahead, exec_pipelined=ahead, prefetch_queue_depth=max(1, prefetch))
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
        self.prefetch = spec.loader.dali_prefetch
        self.pipe = build_pipeline(spec, self.device, self.prefetch)
        from nvidia.dali.plugin.pytorch import feed_ndarray

        self.feed_ndarray = feed_ndarray
        host = torch.from_numpy(spec.data.images)
        self.images = host.to(spec.device) if self.device == "gpu" else host  # uploaded once
        self.labels = torch.from_numpy(spec.data.labels).to(spec.device)
        if self.prefetch:
            self._warm_up()

    @property
    def _stream(self) -> int | None:
        """torch's current stream, read at each use: the gather and DALI's copy must share it."""
        return torch.cuda.current_stream(self.spec.device).cuda_stream if self.device == "gpu" else None

    def _feed_draws(self, n: int, key: int | None) -> None:
        """The per-sample argument inputs of one batch; key None: no augmentation (warm-up)."""
        a = self.spec.augment
        if key is None:
            offsets, flip = torch.full((n, 2), a.crop_padding), torch.zeros(n, dtype=torch.bool)
            box = torch.zeros(n, 4)
        else:
            d = draw(a, n, torch.Generator().manual_seed(key), "cpu")
            offsets, flip, box = d.offsets, d.flip, d.erase_box
        if a.crop_padding > 0:
            self.pipe.feed_input("start", (offsets - a.crop_padding).to(torch.int32).numpy())
        self.pipe.feed_input("mirror", flip.to(torch.int32).numpy())
        if a.erase_p > 0:
            box = box.numpy()
            self.pipe.feed_input("erase_anchor", np.ascontiguousarray(box[:, :2]))
            self.pipe.feed_input("erase_shape", np.ascontiguousarray(box[:, 2:]))

    def _feed(self, idx: torch.Tensor, key: int | None) -> None:
        """Feed one batch, gathered by index where the pipeline runs, and its draws."""
        if self.spec.train:
            self._feed_draws(len(idx), key)
        batch = self.images[idx]
        if self.device == "gpu":  # DALI copies it on torch's stream: no host sync
            self.pipe.feed_input("images", batch, cuda_stream=self._stream)
        else:
            self.pipe.feed_input("images", batch.numpy())  # numpy: a CPU source fed torch tries CUDA

    def _output(self) -> torch.Tensor:
        """The oldest scheduled batch as an NHWC tensor on the training device."""
        s = self.spec
        if self.device == "gpu":
            (out,) = self.pipe.outputs(cuda_stream=self._stream) if self.prefetch else self.pipe.run()
            out = out.as_tensor()
            result = torch.empty(out.shape(), dtype=s.dtype if s.dtype == torch.float16 else torch.float32,
                                 device=s.device)
            self.feed_ndarray(out, result, cuda_stream=self._stream)
        else:
            (out,) = self.pipe.outputs() if self.prefetch else self.pipe.run()
            result = torch.from_numpy(out.as_array()).to(s.device, non_blocking=True)
        return result.to(s.dtype)

    def _warm_up(self) -> None:
        """A pipelined executor's first schedule_run runs `prefetch` batches at once, every later
        one a single batch: spend the first on dummy batches, so each epoch feeds alike."""
        idx = torch.zeros(self.spec.batch_size, dtype=torch.int64, device=self.images.device)
        for _ in range(self.prefetch):
            self._feed(idx, None)
        self.pipe.schedule_run()
        ran = 0
        while not self.pipe.empty():
            self.pipe.outputs()
            ran += 1
        if ran != self.prefetch:
            raise ConfigError(f"loader.dali_prefetch: DALI ran {ran} warm-up batches, expected "
                              f"{self.prefetch}: this DALI version schedules differently; use "
                              "--loader.dali_prefetch=0")

    def __iter__(self):
        s = self.spec
        while self.prefetch and not self.pipe.empty():  # an earlier epoch left before its end
            self.pipe.outputs()
        order = index_tensor(self.order(), self.images.device)
        batches = [order[k * s.batch_size:(k + 1) * s.batch_size] for k in range(self.steps)]
        keys = [self.key(k) if s.train else None for k in range(self.steps)]
        fed = 0
        for step in range(self.steps):
            while fed < min(self.steps, step + max(1, self.prefetch)):  # keep `prefetch` batches in flight
                self._feed(batches[fed], keys[fed])
                if self.prefetch:
                    self.pipe.schedule_run()
                fed += 1
            images = self._output().permute(0, 3, 1, 2)  # NCHW, channels_last view
            if not s.channels_last:
                images = images.contiguous()
            yield images, self.labels[batches[step].to(self.labels.device)]


@register_loader("dali")
def build_dali(spec: LoaderSpec) -> DaliLoader:
    return DaliLoader(spec)
