"""Pretrained CIFAR-10 ResNets: the weight files shipped in fastcifar/weights/, checked by sha256
and loaded strictly.

    from fastcifar.hub import resnet56
    model = resnet56(pretrained=True)
    model = torch.hub.load("path/to/fastcifar", "cifar10_resnet56", source="local", pretrained=True)

Each weight file is a plain fp32 state dict (no DDP or torch.compile prefixes) named
``<name>-<first 8 hex of its sha256>.pt``. ``manifest.json`` records for each name its file, the
full sha256, the training run it came from and the accuracy measured when it was exported: on the
whole test set, and on the first 1000 test images (which a CPU test checks again).
``export_weights`` writes both from a training checkpoint.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import torch
import torch.nn as nn

from fastcifar.errors import CheckpointError, FastcifarError
from fastcifar.files import file_digest, json_text, write_text_atomic
from fastcifar.models import PAPER_DEPTHS, build_model
from fastcifar.scoring import evaluate_model, run_scoring
from fastcifar.training import checkpoint as ckpt

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST = "manifest.json"
SUBSET = 1000  # test images re-checked by the CPU test of shipped weights
HUB_MODELS = {f"cifar10_resnet{d}": f"resnet{d}" for d in PAPER_DEPTHS}


class HubError(FastcifarError):
    pass


def model_name(name: str) -> str:
    """'cifar10_resnet56' -> 'resnet56', or a one-line error listing the valid names."""
    if name not in HUB_MODELS:
        raise HubError(f"unknown hub model {name!r} (valid: {', '.join(HUB_MODELS)})")
    return HUB_MODELS[name]


def read_manifest(weights_dir: str | Path = WEIGHTS_DIR) -> dict:
    path = Path(weights_dir) / MANIFEST
    if not path.is_file():
        return {"schema_version": 1, "weights": {}}
    try:
        manifest = json.loads(path.read_text())
        manifest["weights"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise HubError(f"{path} is not a valid weights manifest ({type(e).__name__}: {e})") from None
    return manifest


def weights_entry(name: str, weights_dir: str | Path = WEIGHTS_DIR) -> dict:
    model_name(name)
    shipped = read_manifest(weights_dir)["weights"]
    if name not in shipped:
        have = ", ".join(sorted(shipped)) or "none yet"
        raise HubError(f"no pretrained weights for {name} in {weights_dir} (shipped: {have}); "
                       "train them with benchmarks/reproduce.py and export them with fastcifar.hub.export_weights")
    entry = shipped[name]
    if not isinstance(entry, dict) or not {"file", "sha256"} <= set(entry):
        raise HubError(f"{Path(weights_dir) / MANIFEST}: the entry for {name} needs 'file' and 'sha256'")
    return entry


def sha256(path: str | Path) -> str:
    return file_digest(path, "sha256")


def load_weights(name: str, weights_dir: str | Path = WEIGHTS_DIR) -> tuple[dict, Path]:
    """The state dict shipped for `name` and its file, after checking its sha256 against the manifest."""
    entry = weights_entry(name, weights_dir)
    path = Path(weights_dir) / entry["file"]
    if not path.is_file():
        raise HubError(f"weights file {path} for {name} is missing (listed in {MANIFEST})")
    found = sha256(path)
    if found != entry["sha256"]:
        raise HubError(f"weights file {path} has sha256 {found}, but {MANIFEST} expects {entry['sha256']}")
    return torch.load(path, map_location="cpu", weights_only=True), path


def get_model(name: str, pretrained: bool = False, weights_dir: str | Path = WEIGHTS_DIR,
              **kwargs) -> nn.Module:
    """A CIFAR-10 ResNet by hub name; with pretrained, its shipped weights, loaded strictly."""
    model = build_model(model_name(name), num_classes=10, **kwargs)
    if pretrained:
        load_into(model, *load_weights(name, weights_dir))
    return model


def _entrypoint(name: str):
    def entry(pretrained: bool = False, **kwargs) -> nn.Module:
        return get_model(name, pretrained, **kwargs)

    entry.__name__ = name
    entry.__doc__ = (f"{HUB_MODELS[name]} for CIFAR-10 (He et al. 2016, option A shortcuts); "
                     "pretrained=True loads the shipped weights, checked by sha256.")
    return entry


for _name in HUB_MODELS:
    globals()[_name] = _entrypoint(_name)
    globals()[HUB_MODELS[_name]] = globals()[_name]  # resnet56(pretrained=True) as well


def architecture(state: dict) -> tuple[int, int, str] | None:
    """(depth, classes, shortcut) of a CifarResNet state dict, read from its keys and shapes, or
    None when it is not one."""
    blocks = {k.split(".")[1] for k in state if k.startswith("layer1.")}
    weight = state.get("fc.weight")
    if not blocks or not all(b.isdigit() for b in blocks) or not isinstance(weight, torch.Tensor):
        return None
    shortcut = "B" if any(".shortcut.0." in k for k in state) else "A"
    return 6 * (max(map(int, blocks)) + 1) + 2, weight.shape[0], shortcut


def _describe(arch: tuple[int, int, str], other: tuple[int, int, str]) -> str:
    """'resnet56', with the class count and shortcut only where they differ from `other`."""
    depth, classes, shortcut = arch
    extra = ([f"{classes} classes"] if classes != other[1] else []) + (
        [f"shortcut {shortcut}"] if shortcut != other[2] else [])
    return f"resnet{depth}" + (f" ({', '.join(extra)})" if extra else "")


def load_into(model: nn.Module, state: dict, source) -> None:
    """Strict load, with one short line naming the file when the state is another model's."""
    try:
        ckpt.load_model_state(model, state)
    except RuntimeError as e:
        found = architecture(ckpt.clean_state_dict(state)) if isinstance(state, dict) else None
        wanted = architecture(ckpt.unwrap(model).state_dict())
        if found is None or wanted is None:
            raise HubError(f"{source} does not hold a CIFAR ResNet state dict") from None
        if found != wanted:
            raise HubError(f"{source} holds a {_describe(found, wanted)} state, not "
                           f"{_describe(wanted, found)}") from None
        detail = " ".join(str(e).split())  # same architecture, other keys: rare, keep it short
        raise HubError(f"{source} does not fit {_describe(wanted, found)}: {detail[:160]}") from None


def read_checkpoint(source: str | Path) -> tuple[dict, Path, dict | None]:
    """(model state, file, the run's config tree or None) of a training checkpoint, the latest one
    in a run directory, or a plain state dict. The config is the one the checkpoint embeds, else
    the run directory's config.yaml; a plain state dict (e.g. shipped weights) has none."""
    import yaml

    source = Path(source)
    path = ckpt.latest_checkpoint(source) if source.is_dir() else source
    if path is None:
        raise CheckpointError(f"no checkpoint_epoch*.pt in {source}")
    state = ckpt.load_checkpoint(path)
    config = None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        config = state.get("config")
        saved = path.parent / "config.yaml"
        if not isinstance(config, dict) and saved.is_file():
            try:
                config = yaml.safe_load(saved.read_text())
            except yaml.YAMLError as e:
                raise CheckpointError(f"{saved} is not valid YAML: {str(e).splitlines()[0]}") from None
        state = state["model"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds no state dict")
    return ckpt.clean_state_dict(state), path, config if isinstance(config, dict) else None


def check_shippable(config: dict | None, path: Path) -> None:
    """Shipped weights are used with CIFAR-10's default normalisation and option A shortcuts (as the
    hub's models are built and evaluated): a run trained otherwise would be shipped with a wrong accuracy.
    A plain state dict carries no config; its shortcut is still checked by the strict load."""
    if config is None:
        return
    run, shipped = run_scoring(config, path), run_scoring(None, path)
    for key, field in (("data.dataset", "dataset"), ("model.shortcut", "shortcut"), ("augment.mean", "mean"),
                       ("augment.std", "std")):
        got, want = getattr(run, field), getattr(shipped, field)
        if got != want:
            got, want = (list(v) if isinstance(v, tuple) else v for v in (got, want))  # shown as the YAML lists
            raise HubError(f"{path}: {key} is {got!r}, but shipped weights need {want!r} (the hub's "
                           "normalisation and shortcuts); evaluate this run with `python -m fastcifar.evaluate` instead")


def export_weights(source: str | Path, name: str, data_root: str | Path,
                   weights_dir: str | Path = WEIGHTS_DIR, record: dict | None = None) -> dict:
    """Write the model of a training checkpoint (or run directory) as `name`'s shipped weights:
    fp32, prefix-free, strictly loadable, named by its sha256, with its accuracy on the test set
    and on the first SUBSET test images (CPU, fp32) in the manifest. `record` (e.g. the run's
    seed and final accuracy during training) is stored beside them."""
    weights_dir = Path(weights_dir)
    state, path, config = read_checkpoint(source)
    check_shippable(config, path)
    model = build_model(model_name(name), num_classes=10)
    load_into(model, state, path)  # strict: a wrong depth fails here, not for a user later
    plain = {k: (v.float() if v.is_floating_point() else v).contiguous()
             for k, v in model.state_dict().items()}
    test = evaluate_model(model, data_root)  # before anything is written: a bad data root leaves nothing
    subset = evaluate_model(model, data_root, limit=SUBSET)
    weights_dir.mkdir(parents=True, exist_ok=True)
    tmp = weights_dir / f".{name}.tmp{os.getpid()}"
    torch.save(plain, tmp)
    digest = sha256(tmp)
    final = weights_dir / f"{name}-{digest[:8]}.pt"
    os.replace(tmp, final)
    entry = {
        "file": final.name,
        "sha256": digest,
        "model": model_name(name),
        "dataset": "cifar10",
        "exported_from": path.name,
        "exported": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "test": test,
        f"test_first_{SUBSET}": subset,
        **({"run": record} if record else {}),
    }
    manifest = read_manifest(weights_dir)
    old = manifest["weights"].get(name, {}).get("file")
    manifest["weights"][name] = entry
    manifest["weights"] = dict(sorted(manifest["weights"].items()))
    write_text_atomic(weights_dir / MANIFEST, json_text(manifest, indent=2) + "\n")
    if old and old != final.name:
        (weights_dir / old).unlink(missing_ok=True)
    return entry
