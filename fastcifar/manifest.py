"""fastcifar/weights/manifest.json: which weights ship for which hub model, and the facts about each.

Schema 2 holds several weights per model, as torchvision's multi-weight API wants:

    {"schema_version": 2,
     "weights": {"cifar10_resnet20": {"akamaster": {"file": ..., "sha256": ..., "test": {...}, ...}}}}

Each entry names its file (``<hub name>-<weight>-<first 8 hex of its sha256>.pt``, a plain fp32
state dict), the file's full sha256, its source (``akamaster`` or this project's run), licence,
parameter count, normalisation, recipe, and the CPU fp32 accuracy this project measured on the whole
test set and on its first SUBSET images, with how it was measured ("measured": command, date, versions,
and test_set_sha256, the digest of the test images and labels themselves, whatever layout they came in). ``add_weight`` is the one writer:
the converter of third-party weights and the export of the project's runs both call it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from fastcifar.errors import FastcifarError
from fastcifar.files import file_digest, json_text, write_text_atomic

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST = "manifest.json"
SCHEMA = 2
SUBSET = 1000  # test images re-checked by the fast CPU test of shipped weights
TOLERANCE = 0.05  # top-1 points a re-measurement may differ from the manifest (the figure)
REQUIRED = ("file", "sha256", "model", "mean", "std", "test")


class HubError(FastcifarError):
    pass


def sha256(path: str | Path) -> str:
    return file_digest(path, "sha256")


def read_manifest(weights_dir: str | Path = WEIGHTS_DIR) -> dict:
    """The manifest, in schema 2 (a schema-1 file, one weight per model, is read as weight 'fastcifar');
    a folder without one ships nothing."""
    path = Path(weights_dir) / MANIFEST
    if not path.is_file():
        return {"schema_version": SCHEMA, "weights": {}}
    try:
        manifest = json.loads(path.read_text())
        weights = manifest["weights"]
        if manifest.get("schema_version", 1) == 1:
            weights = {model: {"fastcifar": entry} for model, entry in weights.items()}
        if not all(isinstance(v, dict) and all(isinstance(e, dict) for e in v.values()) for v in weights.values()):
            raise TypeError("each model must map weight names to entries")
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise HubError(f"{path} is not a valid weights manifest ({type(e).__name__}: {e})") from None
    for model, named in weights.items():
        for weight, entry in named.items():
            missing = [k for k in REQUIRED if k not in entry]
            if missing:
                raise HubError(f"{path}: {model} weight {weight!r} lacks {', '.join(missing)}")
    return {**manifest, "schema_version": SCHEMA, "weights": weights}


def default_weight(named: dict) -> str:
    """The weight pretrained=True takes: the highest measured test top-1 (ties: the first name)."""
    return max(sorted(named), key=lambda w: named[w]["test"]["top1"])


def versions() -> dict:
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__}


def data_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of the test set's content (uint8 HWC images, then int64 labels), whatever file layout
    it was read from: the measurement names exactly the images it saw."""
    import hashlib

    digest = hashlib.sha256(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def measurement(data_root: str | Path, command: list[str] | None = None, dataset: str = "cifar10") -> dict:
    """How a manifest figure was measured: command (default: this process's), date, versions, device
    and the data's digest."""
    from fastcifar.data import load_cifar

    test = load_cifar(dataset, data_root, "test")
    return {"command": " ".join(command or [Path(sys.argv[0]).name, *sys.argv[1:]]),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            **versions(), "device": "cpu", "precision": "fp32, no compile",
            "test_set_sha256": data_digest(test.images, test.labels)}


def plain_state(model: torch.nn.Module) -> dict:
    """fp32, contiguous, prefix-free: the form every shipped file has."""
    return {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}


def add_weight(weights_dir: str | Path, hub_name: str, weight: str, state: dict, entry: dict) -> dict:
    """Write `state` as `hub_name`'s weight `weight` (temp file + rename, named by its sha256) and its
    manifest entry (file and sha256 added to `entry`); a file it replaces is removed after."""
    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    tmp = weights_dir / f".{hub_name}-{weight}.tmp{os.getpid()}"
    try:
        torch.save(state, tmp)
        digest = sha256(tmp)
        final = weights_dir / f"{hub_name}-{weight}-{digest[:8]}.pt"
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    entry = {"file": final.name, "sha256": digest, **entry}
    manifest = read_manifest(weights_dir)
    named = manifest["weights"].setdefault(hub_name, {})
    old = named.get(weight, {}).get("file")
    named[weight] = entry
    manifest["weights"] = {m: dict(sorted(n.items())) for m, n in sorted(manifest["weights"].items())}
    write_text_atomic(weights_dir / MANIFEST, json_text(manifest, indent=2) + "\n")
    if old and old != final.name:
        (weights_dir / old).unlink(missing_ok=True)
    return entry


def readme_markdown(manifest: dict) -> str:
    """The README's "Pretrained models" section from the manifest: per hub model, each shipped weight
    (default first) with its measured accuracy beside the paper's, or a row saying none ships yet."""
    from fastcifar.bench.common import PAPER_TOP1, markdown_table
    from fastcifar.models import PAPER_DEPTHS

    rows, notices = [], {}
    for depth in PAPER_DEPTHS:
        hub_name, paper = f"cifar10_resnet{depth}", PAPER_TOP1.get(depth)
        paper_cell = "—" if paper is None else f"{paper:.2f} ({100 - paper:.2f} % error)"
        named = manifest["weights"].get(hub_name, {})
        if not named:
            rows.append([f"`{hub_name}`", "not yet: needs the project's own runs", "—", "—", paper_cell, "—", "—"])
        for weight in sorted(named, key=lambda w: w != default_weight(named)):
            e = named[weight]
            notices.update({e["license_file"]: weight} if e.get("license_file") else {})
            shown = f"`{weight}`" + (" (default)" if weight == default_weight(named) else "")
            rows.append([f"`{hub_name}`", shown, f"{e['test']['top1']:.2f}", f"{e['test']['top5']:.2f}", paper_cell,
                         f"{e['params']:,}" if e.get("params") else "—", e.get("license", "—").split(" (")[0]])
    table = markdown_table(["model", "weights", "top-1 (measured)", "top-5 (measured)", "paper top-1", "parameters",
                            "licence"], rows)
    notice = "".join(f" `{w}` weights ship with their licence, `fastcifar/weights/{f}`, which a redistribution "
                     "(e.g. a wheel) must reproduce." for f, w in sorted(notices.items()))
    return (f"{table}\n\nTop-1/top-5: % on the 10,000 CIFAR-10 test images, measured by this project (CPU, fp32, "
            "each weight's own normalisation, final-epoch weights) and recorded in `fastcifar/weights/manifest.json` "
            "with the command, versions and the test set's sha256; paper: He et al. 2016, Table 6. `pretrained=True` "
            f"takes the default, the highest measured top-1.{notice}")
