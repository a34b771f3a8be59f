"""Backend 'dali': NVIDIA DALI does crop, flip, normalisation and random erasing.

DALI's host cost grows with the number of samples it handles, not with their size, so one DALI
sample holds one whole training batch (B frames, layout FHWC) and one pipeline run produces K of
them (``loader.dali_batches_per_run``): the host work per run is a few operators on K samples,
whatever the batch size. Crop (zero padding) and flip are one ``multi_paste`` of B regions per
sample from the batch stacked into one tall image and its mirror image (see ``frame_draws``): whole
pixels moved, so exact, and on CPU about twice as fast as a per-frame ``warp_affine``.
``loader.dali_crop=warp_affine`` does the same crop and flip as one ``warp_affine`` with a matrix per
frame (nearest neighbour, so the same images): on the GPU ``multi_paste`` builds its B regions per
sample on the host, which ``warp_affine`` avoids; which is faster there is for a GPU to measure.
``crop_mirror_normalize`` normalises the whole sample; random erasing comes after normalising, as
B regions of one sample (``erase`` over FHW), in float32 (the GPU erase has no float16 kernel) and
cast at the end.

GPU mode (loader.device gpu, or auto on CUDA): the uint8 NHWC data set is uploaded to the GPU once;
each run's K batches are gathered on the GPU by index (torch) into one (K, B, 32, 32, 3) tensor fed
to ``fn.external_source(device="gpu")`` on torch's current stream, and the outputs are bound to that
stream: no image data crosses the host and nothing waits for the GPU. CPU mode (loader.device cpu,
or auto without CUDA): the same pipeline definition on CPU operators, fed numpy arrays, so CI runs
the real DALI graph without a GPU.

The draws stay keyed per batch: ``pipelines.torch_gpu.draw`` on a CPU generator seeded with
(seed, epoch, rank, step), turned into one small [B, 19] float32 array per batch (paste and erase
regions and an affine matrix per frame). So DALI's CPU and GPU modes and the torch-gpu backend on CPU make
the very same draws for the same batch, and a resumed run sees the same images.

DALI runs with its asynchronous dynamic executor, always at least one run ahead of the trainer:
while the trainer consumes run r's K batches, run r + 1 (and ``loader.dali_prefetch`` more) are
already fed and scheduled.
"""

from __future__ import annotations

import numpy as np
import torch

from fastcifar.threads import loader_threads
from fastcifar.errors import ConfigError
from fastcifar.pipelines.base import LoaderSpec, host_to_device, loader_device, register_loader
from fastcifar.pipelines.sharding import EpochPlan, index_tensor
from fastcifar.pipelines.torch_gpu import draw

MISSING = ("loader 'dali' needs DALI: pip install -e '.[dali]' (CUDA 12) or -e '.[dali-cuda130]' "
           "(CUDA 13), or choose --loader.name=torch-gpu or --loader.name=torchvision")


def _import_dali():
    try:
        from nvidia.dali import fn, pipeline_def, types
    except ImportError:
        raise ConfigError(MISSING) from None
    return fn, pipeline_def, types


def pipeline_device(spec: LoaderSpec) -> str:
    """'gpu' or 'cpu': where the DALI operators run."""
    if spec.loader.device == "gpu" and spec.device.type != "cuda":  # its outputs are bound to that device's stream
        raise ConfigError(f"loader.device: 'gpu' runs the dali loader on the training device, which is "
                          f"{spec.device.type} here; use --loader.device=cpu (or auto), or train on CUDA")
    return "gpu" if loader_device(spec).type == "cuda" else "cpu"


def uses_draws(spec: LoaderSpec) -> tuple[bool, bool]:
    """(crop or flip, erase): which draw-driven operators the graph has."""
    a = spec.augment
    return spec.train and (a.crop_padding > 0 or a.flip_p > 0), spec.train and a.erase_p > 0


DRAW_COLUMNS = 19  # paste regions 0:8, erase regions 8:13, warp_affine matrices 13:19


def frame_draws(spec: LoaderSpec, n: int, key: int, sample: int) -> np.ndarray:
    """One batch's draws as the [n, 19] float32 array the pipeline reads, for the run's `sample`.

    multi_paste (columns 0:8): the batch's frames are stacked into one tall (n * 32, 32) image, its
    mirror image stacked below it; frame f's crop is the part of its window (offset dy, dx from the
    unpadded image) that lies inside the image, pasted onto a zero canvas at f * 32 shifted by the
    part outside: zero padding without padding anything. A mirrored frame's window is the mirror
    image's, at -dx.
    warp_affine (columns 13:19): per frame the 2x3 matrix taking an output point (x, y) to its source
    point, in continuous coordinates (pixel i covers [i, i + 1)): x + dx, or 32 - x + dx mirrored,
    and y + dy; nearest-neighbour sampling at pixel centres lands on whole pixels, so it is exact,
    and points outside the image read the fill value 0: the zero padding."""
    a = spec.augment
    d = draw(a, n, torch.Generator().manual_seed(key), "cpu")
    # numpy from here: this runs on the host for every batch, and torch's per-op overhead doubled it
    dy, dx = (d.offsets.numpy() - a.crop_padding).T
    flip = d.flip.numpy()
    dx = np.where(flip, -dx, dx)
    frame = np.arange(n)
    out = np.zeros((n, DRAW_COLUMNS), np.float32)
    out[:, 0] = (flip * n + frame) * 32 + np.maximum(dy, 0)
    out[:, 1], out[:, 2], out[:, 3] = np.maximum(dx, 0), 32 - np.abs(dy), 32 - np.abs(dx)
    out[:, 4], out[:, 5] = frame * 32 + np.maximum(-dy, 0), np.maximum(-dx, 0)
    out[:, 6], out[:, 7], out[:, 10] = sample, frame, 1
    box = d.erase_box.numpy()
    out[:, 8:10], out[:, 11:13] = box[:, :2], box[:, 2:]
    dx_unflipped = d.offsets.numpy()[:, 1] - a.crop_padding
    out[:, 13] = np.where(flip, -1, 1)  # [[±1, 0, tx], [0, 1, dy]]
    out[:, 15] = np.where(flip, 32 + dx_unflipped, dx_unflipped)
    out[:, 17], out[:, 18] = 1, dy
    return out


def build_pipeline(spec: LoaderSpec, device: str, runs_ahead: int):
    """One definition for both devices: the operators follow the device of the fed images."""
    fn, pipeline_def, types = _import_dali()
    a = spec.augment
    crop, erase = uses_draws(spec)
    device_id = (spec.device.index or 0) if device == "gpu" else None
    threads = max(1, loader_threads(spec.loader))  # fastcifar/threads.py: this process's share

    # async + pipelined selects the dynamic executor: outputs(cuda_stream=...) without a host sync
    @pipeline_def(batch_size=spec.loader.dali_batches_per_run, num_threads=threads, device_id=device_id,
                  exec_async=True, exec_pipelined=True, exec_dynamic=True, prefetch_queue_depth=runs_ahead)
    def augment():
        # CPU mode reads the fed array in place (kept alive until its run is taken): no 25 MB copy
        images = fn.external_source(name="images", device=device, layout="FHWC", no_copy=device == "cpu")
        if crop or erase:
            draws = fn.external_source(name="draws", layout="")
        if crop and spec.loader.dali_crop == "warp_affine":  # one operator, a matrix per frame
            matrices = fn.reshape(draws[:, 13:19], shape=[-1, 2, 3])
            images = fn.warp_affine(images, matrix=fn.per_frame(matrices), size=[32, 32], fill_value=0,
                                    interp_type=types.INTERP_NN, inverse_map=True)
        elif crop:  # copies of whole samples and rows only: no per-frame operator
            def ints(lo, hi):
                return fn.cast(draws[:, lo:hi], dtype=types.INT32)

            tall = fn.reshape(images, shape=[-1, 32, 3], layout="HWC")
            if a.flip_p > 0:
                tall = fn.cat(tall, fn.flip(tall, horizontal=1), axis=0)
            images = fn.multi_paste(tall, in_ids=fn.cast(draws[:, 6], dtype=types.INT32), in_anchors=ints(0, 2),
                                    shapes=ints(2, 4), out_anchors=ints(4, 6), output_size=[spec.batch_size * 32, 32])
            images = fn.reshape(images, shape=[-1, 32, 32, 3], layout="FHWC")
        out = fn.crop_mirror_normalize(images, mean=[m * 255 for m in a.mean], std=[s * 255 for s in a.std],
                                       dtype=types.FLOAT, output_layout="FHWC")
        if erase:
            out = fn.erase(out, anchor=draws[:, 7:10], shape=draws[:, 10:13], axis_names="FHW",
                           fill_value=a.erase_value)
        return fn.cast(out, dtype=types.FLOAT16) if spec.dtype == torch.float16 else out

    pipe = augment()
    pipe.build()
    return pipe


class DaliLoader(EpochPlan):
    def __init__(self, spec: LoaderSpec):
        super().__init__(spec)
        if spec.train and spec.augment.crop_padding >= 32:  # a window would then lie wholly outside
            raise ConfigError(f"augment.crop_padding: {spec.augment.crop_padding} is too large for loader "
                              "'dali': expected < 32")
        self.device = pipeline_device(spec)
        self.per_run = spec.loader.dali_batches_per_run
        self.runs_ahead = spec.loader.dali_prefetch + 1  # the executor's queue: runs fed and scheduled
        self.pipe = build_pipeline(spec, self.device, self.runs_ahead)
        from nvidia.dali.plugin.pytorch import feed_ndarray

        self.feed_ndarray = feed_ndarray
        # GPU: uploaded once, gathered by torch on the device; CPU: numpy's gather is ~6x torch's
        self.images = (torch.from_numpy(spec.data.images).to(spec.device) if self.device == "gpu"
                       else np.ascontiguousarray(spec.data.images))
        self.labels = torch.from_numpy(spec.data.labels).to(spec.device)
        self.pending: list = []  # the fed frames of runs scheduled and not yet taken, oldest first
        self._warm_up()

    @property
    def _stream(self) -> int | None:
        """torch's current stream, read at each use: the gather and DALI's copies must share it."""
        return torch.cuda.current_stream(self.spec.device).cuda_stream if self.device == "gpu" else None

    def _feed_images(self, frames) -> None:
        """frames: (k, b, 32, 32, 3) uint8, k samples: a CUDA tensor (GPU mode) or a numpy array."""
        if self.device == "gpu":  # DALI copies it on torch's stream: no host sync
            self.pipe.feed_input("images", frames, cuda_stream=self._stream, layout="FHWC")
        else:  # numpy: a CPU source fed a torch tensor tries to initialise CUDA
            self.pipe.feed_input("images", frames, layout="FHWC")

    def _feed(self, frames, draws: list[np.ndarray] | None) -> None:
        """Schedule one run."""
        if draws is not None:
            self.pipe.feed_input("draws", draws)
        self._feed_images(frames)
        self.pipe.schedule_run()
        self.pending.append(frames)

    def _take(self) -> torch.Tensor:
        """The oldest scheduled run as a (k, b, 32, 32, 3) tensor on the training device."""
        s = self.spec
        self.pending.pop(0)  # its run is done with the fed frames once outputs() returns
        if self.device == "gpu":
            (out,) = self.pipe.outputs(cuda_stream=self._stream)  # bound to torch's stream, no wait
            out = out.as_tensor()
            result = torch.empty(out.shape(), dtype=torch.float16 if s.dtype == torch.float16 else torch.float32,
                                 device=s.device)
            self.feed_ndarray(out, result, cuda_stream=self._stream)  # a copy: DALI reuses its buffers
        else:
            # the dynamic executor never reuses a returned buffer: a view, no copy of 100 MB a run
            (out,) = self.pipe.outputs()
            result = host_to_device(torch.from_numpy(np.asarray(out.as_tensor())), s.device)
        return result.to(s.dtype)

    def _warm_up(self) -> None:
        """The executor's first schedule_run runs a whole queue of runs at once, every later one a
        single run: spend the first on one-sample dummy runs, so that each epoch feeds alike."""
        crop, erase = uses_draws(self.spec)
        frames = np.zeros((1, self.spec.batch_size, 32, 32, 3), np.uint8)
        frames = torch.from_numpy(frames).to(self.spec.device) if self.device == "gpu" else frames
        for _ in range(self.runs_ahead):
            if crop or erase:
                self.pipe.feed_input("draws", [frame_draws(self.spec, self.spec.batch_size, 0, 0)])
            self._feed_images(frames)
        self.pipe.schedule_run()
        ran = 0
        while not self.pipe.empty():
            self.pipe.outputs()
            ran += 1
        if ran != self.runs_ahead:
            raise ConfigError(f"loader.dali_prefetch: DALI ran {ran} warm-up runs, expected {self.runs_ahead}: "
                              "this DALI version schedules differently; use --loader.dali_prefetch=0")

    def runs(self, n: int) -> list[list[int]]:
        """The epoch's steps from self.start on (n images in the whole epoch) grouped into pipeline
        runs of at most K batches of one size each: the eval split's partial last batch runs alone."""
        s = self.spec
        sizes = [min(s.batch_size, n - k * s.batch_size) for k in range(self.steps)]
        runs: list[list[int]] = []
        for step, size in enumerate(sizes):
            if step < self.start:  # resumed mid-epoch: runs begin at the start step
                continue
            if runs and len(runs[-1]) < self.per_run and sizes[runs[-1][0]] == size:
                runs[-1].append(step)
            else:
                runs.append([step])
        return runs

    def __iter__(self):
        s = self.spec
        crop, erase = uses_draws(s)
        while self.pending:  # an earlier epoch left before its end: its runs are still queued
            self.pending.pop(0)
            self.pipe.outputs(cuda_stream=self._stream)  # bound to the stream: dropped without a wait
        indices = self.order()
        runs = self.runs(len(indices))
        order = index_tensor(indices, s.device)
        gather = order if self.device == "gpu" else np.asarray(indices, np.int64)

        def feed(r: int) -> None:
            steps = runs[r]
            idx = gather[steps[0] * s.batch_size:(steps[-1] + 1) * s.batch_size]
            frames = self.images[idx].reshape(len(steps), -1, 32, 32, 3)  # one gather for k batches
            size = frames.shape[1]
            draws = [frame_draws(s, size, self.key(step), k) for k, step in enumerate(steps)] if crop or erase else None
            self._feed(frames, draws)

        fed = 0
        for r, steps in enumerate(runs):
            while fed < min(len(runs), r + self.runs_ahead):
                feed(fed)
                fed += 1
            out = self._take()
            if fed < len(runs):  # refill at once: the next run works while the trainer uses this one
                feed(fed)
                fed += 1
            for k, step in enumerate(steps):
                images = out[k].permute(0, 3, 1, 2)  # NCHW, channels_last view
                if not s.channels_last:
                    images = images.contiguous()
                yield images, self.labels[order[step * s.batch_size:(step + 1) * s.batch_size]]


@register_loader("dali")
def build_dali(spec: LoaderSpec) -> DaliLoader:
    return DaliLoader(spec)
