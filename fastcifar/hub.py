"""Pretrained CIFAR-10 ResNets, following torchvision's multi-weight API.

    from fastcifar.hub import resnet56, CIFAR10_ResNet56_Weights
    model = resnet56(pretrained=True)                   # the default: highest measured accuracy
    model = resnet56(weights="akamaster")               # one weight by name (or the enum member)
    weights = CIFAR10_ResNet56_Weights.DEFAULT
    weights.meta["_metrics"], weights.meta["source"], weights.meta["license"], weights.meta["num_params"]
    logits = model.eval()(weights.transforms()(pil_image))   # ToTensor + the weight's own normalisation
    model = torch.hub.load("path/to/fastcifar", "cifar10_resnet56", source="local", pretrained=True)

Each model has a ``CIFAR10_ResNet<D>_Weights`` enum (a torchvision ``WeightsEnum``) built from
fastcifar/weights/manifest.json (see fastcifar/manifest.py): one member per shipped weight, named
like ``AKAMASTER`` or ``FASTCIFAR_SEED0``, and ``DEFAULT``. Files are checked by sha256 and loaded
strictly. ``export_weights`` ships a training run; fastcifar.bench.convert_weights third-party weights.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn as nn
from torchvision.models import Weights, WeightsEnum

from fastcifar.errors import CheckpointError, FastcifarError
from fastcifar.manifest import (  # noqa: F401 (part of the hub's API)
    MANIFEST, SUBSET, TOLERANCE, WEIGHTS_DIR, HubError, add_weight, default_weight, measurement, plain_state,
    read_manifest, sha256,
)
from fastcifar.models import PAPER_DEPTHS, build_model
from fastcifar.scoring import evaluate_model, run_scoring
from fastcifar.training import checkpoint as ckpt

HUB_MODELS = {f"cifar10_resnet{d}": f"resnet{d}" for d in PAPER_DEPTHS}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
NOT_YET = "not yet: needs the project's own runs (benchmarks/reproduce.py, then benchmarks/export_weights.py)"


def model_name(name: str) -> str:
    """'cifar10_resnet56' -> 'resnet56', or a one-line error listing the valid names."""
    if name not in HUB_MODELS:
        raise HubError(f"unknown hub model {name!r} (valid: {', '.join(HUB_MODELS)})")
    return HUB_MODELS[name]


class CifarEval(nn.Module):
    """A weight's eval transform: a PIL image (or HWC uint8 array, or CHW uint8 tensor) -> float CHW,
    scaled to 0-1 and normalised with the weight's own mean and std. No resize: CIFAR images are 32x32."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.mean, self.std = list(mean), list(std)

    def forward(self, img) -> torch.Tensor:
        from torchvision.transforms import functional as F

        if not isinstance(img, torch.Tensor):
            img = F.pil_to_tensor(img) if hasattr(img, "getbands") else torch.as_tensor(img).permute(2, 0, 1)
        return F.normalize(F.convert_image_dtype(img, torch.float), self.mean, self.std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


class CifarWeightsEnum(WeightsEnum):
    """torchvision's WeightsEnum for files shipped in the package: get_state_dict reads the local file
    after checking its sha256, and verify also takes the manifest's name ('akamaster')."""

    @classmethod
    def verify(cls, obj):
        if isinstance(obj, str):
            key = obj.replace(cls.__name__ + ".", "")
            key = key if key in cls.__members__ else key.upper().replace("-", "_")
            if key not in cls.__members__:
                names = ", ".join(m.meta["name"] for m in cls) or "none shipped yet"
                raise HubError(f"weights={obj!r}: no such weights for {cls.__name__} (valid: {names}, DEFAULT)")
            return cls[key]
        return super().verify(obj)

    def get_state_dict(self, *args, **kwargs) -> dict:
        path = Path(self.meta["path"])
        if not path.is_file():
            raise HubError(f"weights file {path} for {self!r} is missing (listed in {MANIFEST})")
        found = sha256(path)
        if found != self.meta["sha256"]:
            raise HubError(f"weights file {path} has sha256 {found}, but {MANIFEST} expects {self.meta['sha256']}")
        return torch.load(path, map_location="cpu", weights_only=True)


def enum_name(hub_name: str) -> str:
    return f"CIFAR10_ResNet{HUB_MODELS[hub_name].removeprefix('resnet')}_Weights"


def _weights(hub_name: str, weight: str, entry: dict, weights_dir: Path) -> Weights:
    path = (weights_dir / entry["file"]).resolve()
    meta = {**entry, "name": weight, "path": str(path), "num_params": entry.get("params"),
            "categories": list(CIFAR10_CLASSES), "min_size": (32, 32),
            "_metrics": {"CIFAR-10": {"acc@1": entry["test"]["top1"], "acc@5": entry["test"]["top5"]}},
            "_docs": f"{hub_name} weights '{weight}' from {entry.get('source', weight)}."}
    return Weights(url=path.as_uri(), meta=meta,
                   transforms=functools.partial(CifarEval, mean=tuple(entry["mean"]), std=tuple(entry["std"])))


def weights_enum(hub_name: str, weights_dir: str | Path = WEIGHTS_DIR) -> type[CifarWeightsEnum]:
    """The weights enum of a hub model, read from `weights_dir`'s manifest: one member per weight
    and DEFAULT (an alias of the one with the highest measured top-1), as in torchvision."""
    model_name(hub_name)
    weights_dir = Path(weights_dir)
    named = read_manifest(weights_dir)["weights"].get(hub_name, {})
    members = [(w.upper().replace("-", "_"), _weights(hub_name, w, e, weights_dir)) for w, e in named.items()]
    if named:
        members.append(("DEFAULT", _weights(hub_name, default_weight(named), named[default_weight(named)], weights_dir)))
    return CifarWeightsEnum(enum_name(hub_name), members, module=__name__)


def resolve_weights(hub_name: str, weights=None, pretrained: bool = False,
                    weights_dir: str | Path = WEIGHTS_DIR) -> CifarWeightsEnum | None:
    """The weights a builder loads: `weights` (a name, 'DEFAULT' or a member), or with pretrained
    the default; None for a randomly initialised model. One line when none ship for the model."""
    if weights is None and not pretrained:
        return None
    if isinstance(weights, WeightsEnum):  # by name: the module's enum and one read from weights_dir alike
        if type(weights).__name__ != enum_name(hub_name):
            raise HubError(f"weights={weights!r} are not {hub_name}'s (expected {enum_name(hub_name)})")
        weights = weights.meta["name"]
    enum = weights_enum(hub_name, weights_dir)
    if not len(enum):
        raise HubError(f"no pretrained weights for {hub_name} in {weights_dir}: {NOT_YET}")
    return enum.verify("DEFAULT" if weights is None else weights)


def get_model(name: str, pretrained: bool = False, weights=None, weights_dir: str | Path = WEIGHTS_DIR,
              progress: bool = True, **kwargs) -> nn.Module:
    """A CIFAR-10 ResNet by hub name; with weights (or pretrained: the default ones), loaded strictly.
    `progress` is accepted for torchvision's signature; the files are local."""
    chosen = resolve_weights(name, weights, pretrained, weights_dir)
    model = build_model(model_name(name), num_classes=10, **kwargs)
    if chosen is not None:
        load_into(model, chosen.get_state_dict(), chosen.meta["path"])
    return model


def _entrypoint(name: str):
    def entry(pretrained: bool = False, weights=None, progress: bool = True, **kwargs) -> nn.Module:
        return get_model(name, pretrained, weights, progress=progress, **kwargs)

    entry.__name__ = name
    entry.__doc__ = (f"{HUB_MODELS[name]} for CIFAR-10 (He et al. 2016, option A shortcuts). weights: a name of "
                     f"{enum_name(name)} (e.g. 'akamaster'), a member of it or 'DEFAULT'; pretrained=True is "
                     "DEFAULT, the weights with the highest measured test accuracy. sha256-checked, strict.")
    return entry


for _name in HUB_MODELS:
    globals()[_name] = _entrypoint(_name)
    globals()[HUB_MODELS[_name]] = globals()[_name]  # resnet56(pretrained=True) as well
    globals()[enum_name(_name)] = weights_enum(_name)


def get_weight(name: str) -> CifarWeightsEnum:
    """torchvision.models.get_weight for this hub: 'CIFAR10_ResNet56_Weights.AKAMASTER' -> the member."""
    enum, _, member = name.partition(".")
    hub_name = {enum_name(h): h for h in HUB_MODELS}.get(enum)
    if hub_name is None or not member:
        raise HubError(f"weights {name!r}: expected <enum>.<member>, e.g. {enum_name('cifar10_resnet56')}.DEFAULT")
    return globals()[enum].verify(member)


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
    """Shipped weights are CIFAR-10 models with option A shortcuts (as the hub builds them): a run
    trained otherwise would not load, or be scored on the wrong data. Its normalisation ships with
    it. A plain state dict carries no config; its shortcut is still checked by the strict load."""
    if config is None:
        return
    run, shipped = run_scoring(config, path), run_scoring(None, path)
    for key, field in (("data.dataset", "dataset"), ("model.shortcut", "shortcut")):
        got, want = getattr(run, field), getattr(shipped, field)
        if got != want:
            raise HubError(f"{path}: {key} is {got!r}, but shipped weights need {want!r} (the hub's data set "
                           "and shortcuts); evaluate this run with `python -m fastcifar.evaluate` instead")


def export_weights(source: str | Path, name: str, data_root: str | Path,
                   weights_dir: str | Path = WEIGHTS_DIR, record: dict | None = None,
                   weight: str = "fastcifar") -> dict:
    """Ship the model of a training checkpoint (or run directory) as `name`'s weight `weight`: fp32,
    prefix-free, strictly loadable, named by its sha256, with the run's normalisation and its
    accuracy on the test set and on the first SUBSET test images (CPU, fp32) in the manifest.
    `record` (e.g. the run's seed and final accuracy during training) is stored beside them."""
    state, path, config = read_checkpoint(source)
    check_shippable(config, path)
    scoring = run_scoring(config, path)
    model = build_model(model_name(name), num_classes=10)
    load_into(model, state, path)  # strict: a wrong depth fails here, not for a user later
    # measured before anything is written: a bad data root leaves nothing
    test = evaluate_model(model, data_root, mean=scoring.mean, std=scoring.std)
    subset = evaluate_model(model, data_root, limit=SUBSET, mean=scoring.mean, std=scoring.std)
    entry = {
        "model": model_name(name), "dataset": "cifar10", "source": weight,
        "source_repository": "fastcifar (this project)", "source_file": path.name,
        "license": "MIT (this project's)", "params": sum(p.numel() for p in model.parameters()),
        "mean": list(scoring.mean), "std": list(scoring.std),
        "recipe": f"this project's training run ({path.parent.name}/{path.name})",
        "test": test, f"test_first_{SUBSET}": subset, "measured": measurement(data_root),
        **({"run": record} if record else {}),
    }
    return add_weight(weights_dir, name, weight, plain_state(model), entry)
