"""CIFAR-10/100 in memory: uint8 NHWC images and int64 labels, from any of three layouts.

Looked for under ``root`` in this order:
  1. ``<root>/<dataset>/{train,test}.npz`` holding ``images`` (uint8 [N,32,32,3]) and integer ``labels``;
  2. the extracted official layout ``cifar-10-batches-py/`` or ``cifar-100-python/``, read with
     plain pickle and no per-file md5 check (re-packed copies have other bytes);
  3. the official archive ``cifar-{10,100}-python.tar.gz``, extracted in place;
  4. a download of that archive (when ``download`` is on), md5-checked before it is kept.
"""

from __future__ import annotations

import pickle
import shutil
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastcifar.errors import DataError
from fastcifar.files import file_digest


@dataclass(frozen=True)
class CifarSpec:
    name: str
    num_classes: int
    folder: str  # the extracted official layout
    archive: str
    md5: str  # published md5 of the archive
    files: dict  # split -> batch files inside `folder`
    label_key: bytes
    size: dict  # split -> number of images


SPECS = {
    "cifar10": CifarSpec(
        "CIFAR-10", 10, "cifar-10-batches-py", "cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        b"labels", {"train": 50000, "test": 10000},
    ),
    "cifar100": CifarSpec(
        "CIFAR-100", 100, "cifar-100-python", "cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        {"train": ["train"], "test": ["test"]},
        b"fine_labels", {"train": 50000, "test": 10000},
    ),
}
URL_BASE = "https://www.cs.toronto.edu/~kriz/"


@dataclass(frozen=True)
class CifarSplit:
    images: np.ndarray  # uint8 [N, 32, 32, 3], RGB
    labels: np.ndarray  # int64 [N]
    num_classes: int

    def __len__(self) -> int:
        return len(self.labels)


def _spec(dataset: str) -> CifarSpec:
    if dataset not in SPECS:
        raise DataError(f"data.dataset: unknown data set {dataset!r} (valid: {', '.join(SPECS)})")
    return SPECS[dataset]


def _check(images, labels, num_classes: int, source: Path) -> CifarSplit:
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
            and images.shape[1:] == (32, 32, 3)):
        shape = getattr(images, "shape", None)
        dtype = getattr(images, "dtype", None)
        raise DataError(f"{source}: images must be uint8 [N,32,32,3], got {dtype} {shape}")
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):  # float labels would be truncated silently
        raise DataError(f"{source}: labels must have an integer dtype, got {labels.dtype}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{source}: {len(images)} images but labels of shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{source}: labels must lie in [0, {num_classes}), found {labels.min()}..{labels.max()}")
    return CifarSplit(np.ascontiguousarray(images), labels.astype(np.int64), num_classes)


def _read_npz(path: Path, spec: CifarSpec) -> CifarSplit:
    try:
        with np.load(path) as f:
            missing = {"images", "labels"} - set(f.files)
            if missing:
                raise DataError(f"{path}: missing array(s) {', '.join(sorted(missing))}; expected 'images' and 'labels'")
            images, labels = f["images"], f["labels"]
    except DataError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, OSError):
        # numpy's own text would advise loading it with allow_pickle: never, for a data file
        raise DataError(f"{path} is truncated or not a valid .npz file (expected a numpy.savez archive of "
                        "arrays 'images' and 'labels')") from None
    return _check(images, labels, spec.num_classes, path)


def _read_official(folder: Path, split: str, spec: CifarSpec) -> CifarSplit:
    images, labels = [], []
    for name in spec.files[split]:
        path = folder / name
        if not path.is_file():
            raise DataError(f"{path} is missing from the extracted {spec.name} folder {folder}")
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batch[spec.label_key], dtype=np.int64))
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as e:
            raise DataError(f"{path} is truncated or not an official {spec.name} batch ({type(e).__name__}: {e})") from None
    return _check(np.concatenate(images), np.concatenate(labels), spec.num_classes, folder)


def _remove_created(root: Path, created: list[Path]) -> None:
    """The folders download_archive made, innermost first, where still empty: a failure leaves no trace."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:  # not empty, or gone
            break


def download_archive(root: Path, spec: CifarSpec, url: str | None = None, dataset: str = "") -> Path:
    """Download into a .part file, check the published md5, then rename: never a partial archive."""
    url = url or URL_BASE + spec.archive
    created = [p for p in (*reversed(root.parents), root) if not p.exists()]
    root.mkdir(parents=True, exist_ok=True)
    final, part = root / spec.archive, root / (spec.archive + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
            shutil.copyfileobj(response, out)
    except Exception as e:
        part.unlink(missing_ok=True)
        _remove_created(root, created)
        npz = root / (dataset or spec.name.lower().replace("-", "")) / "{train,test}.npz"
        raise DataError(
            f"{spec.name} not found under {root} and the download failed: {e}; place {spec.archive} there, "
            f"or its extracted {spec.folder}/, or {npz} (arrays 'images' uint8 [N,32,32,3] and 'labels'), "
            "and pass --data.download=false"
        ) from None
    digest = file_digest(part, "md5")
    if digest != spec.md5:
        part.unlink(missing_ok=True)
        _remove_created(root, created)
        raise DataError(f"downloaded {spec.archive} has md5 {digest}, expected {spec.md5}; it was deleted, try again")
    part.replace(final)
    return final


def _extract(archive: Path, root: Path, spec: CifarSpec) -> None:
    try:
        with tarfile.open(archive) as tar:
            try:
                tar.extractall(root, filter="data")
            except TypeError:  # Python < 3.10.12 has no extraction filters
                tar.extractall(root)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{archive} is truncated or not a valid tar.gz archive ({e})") from None
    if not (root / spec.folder).is_dir():
        raise DataError(f"{archive} does not contain the folder {spec.folder}/")


def load_cifar(dataset: str, root: str | Path, split: str, download: bool = False) -> CifarSplit:
    spec = _spec(dataset)
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    npz = root / dataset / f"{split}.npz"
    if npz.is_file():
        return _read_npz(npz, spec)
    folder = root / spec.folder
    if not folder.is_dir():
        archive = root / spec.archive
        if not archive.is_file():
            if not download:
                raise DataError(
                    f"{spec.name} not found under {root}: expected {npz}, {folder}/ or {archive} "
                    f"(or set data.download=true)"
                )
            archive = download_archive(root, spec, dataset=dataset)
        _extract(archive, root, spec)
    return _read_official(folder, split, spec)


def num_classes(dataset: str) -> int:
    return _spec(dataset).num_classes
