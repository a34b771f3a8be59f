"""One typed config: a frozen dataclass per section, mirrored by the YAML files in configs/.

Load a YAML file, merge ``--section.key=value`` overrides, check every key and type, validate the
values, and freeze. Unknown keys, wrong types and impossible values raise ConfigError with a
one-line message that names the key.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fastcifar.errors import ConfigError
from fastcifar.files import write_text_atomic

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "resnet20"  # resnet20/32/44/56/110/1202 or any resnet<6n+2>
    shortcut: str = "A"  # A: subsample + zero-pad (the paper's CIFAR choice); B: 1x1 conv + BN


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "cifar10"  # cifar10 | cifar100
    root: str = "data"
    download: bool = True


@dataclass(frozen=True)
class AugmentConfig:
    """Train-time augmentation, shared by every loader backend. Eval only normalises."""

    crop_padding: int = 4  # random crop of 32x32 from the zero-padded image; 0 turns it off
    flip_p: float = 0.5
    erase_p: float = 0.5  # random erasing (Zhong et al.), after normalisation
    erase_scale: tuple[float, ...] = (0.02, 0.4)
    erase_ratio: tuple[float, ...] = (0.3, 3.3)
    erase_value: float = 0.0  # fill, in normalised units (0 = the data set's mean colour)
    mean: tuple[float, ...] = CIFAR10_MEAN  # on the 0-1 scale
    std: tuple[float, ...] = CIFAR10_STD


@dataclass(frozen=True)
class LoaderConfig:
    name: str = "torchvision"  # a name in pipelines.LOADERS
    device: str = "auto"  # where a GPU-capable loader runs: auto (follows train.device) | gpu | cpu
    workers: int = 4  # CPU worker processes (torchvision backend)
    eval_batch_size: int = 1000  # global
    dtype: str = "float32"  # images handed to the model: float32 | float16 | bfloat16
    dali_prefetch: int = 0  # dali: batches scheduled ahead by the pipelined executor; 0 runs each batch synchronously


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.1  # peak learning rate for the global batch
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    no_wd_bn_bias: bool = False  # exempt BatchNorm weights and all biases from weight decay
    label_smoothing: float = 0.1


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = "multistep"  # multistep | cosine | onecycle | constant
    warmup_epochs: float = 10.0
    warmup_start_lr: float = 1e-5
    milestones: tuple[float, ...] = (100.0, 150.0)  # epochs (multistep)
    gamma: float = 0.1  # multistep factor
    final_lr: float = 0.0  # cosine and onecycle end here


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 200
    batch_size: int = 128  # global, over all ranks
    seed: int = 0
    deterministic: bool = False  # deterministic algorithms (bit-exact reruns on CPU)
    device: str = "auto"  # auto | cuda | cpu
    amp: str = "auto"  # auto (bf16 on CUDA, none on CPU) | bf16 | fp16 | none
    channels_last: bool = True
    compile: str = "auto"  # auto (on CUDA only) | true | false
    compile_mode: str = "default"  # torch.compile mode, e.g. max-autotune-no-cudagraphs
    eval_every: int = 1  # epochs; the last epoch is always evaluated
    checkpoint_every: int = 10  # epochs; the last epoch, and the epoch a run is stopped at, are always saved
    keep_checkpoints: int = 0  # keep only the newest N checkpoints; 0 keeps all
    log_every: int = 50  # steps between host syncs for logging
    run_dir: str = "runs/default"
    resume: bool = False  # continue from run_dir's latest checkpoint
    progress: bool = True  # tqdm bars on rank 0


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


CHOICES = {
    "model.shortcut": ("A", "B"),
    "data.dataset": ("cifar10", "cifar100"),
    "loader.device": ("auto", "gpu", "cpu"),
    "loader.dtype": ("float32", "float16", "bfloat16"),
    "schedule.name": ("multistep", "cosine", "onecycle", "constant"),
    "train.device": ("auto", "cuda", "cpu"),
    "train.amp": ("auto", "bf16", "fp16", "none"),
    "train.compile": ("auto", "true", "false"),
    "train.compile_mode": ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
}


def _sections() -> dict[str, type]:
    return {f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)}


def _coerce(key: str, value, kind):
    """Check one value against its declared type; ints may stand for floats, YAML's '1e-5' too."""
    origin = typing.get_origin(kind)
    if origin is tuple:
        (elem, _ellipsis) = typing.get_args(kind)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {elem.__name__}, got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", v, elem) for i, v in enumerate(value))
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, bool):  # YAML reads true/false as bools; 'train.compile' is a str
            return "true" if value else "false"
        if isinstance(value, (str, int, float)):
            return str(value)
    raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r} ({type(value).__name__})")


def _build_section(name: str, cls: type, values: dict):
    if not isinstance(values, dict):
        raise ConfigError(f"{name}: expected a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ConfigError(
            f"unknown config key {name}.{unknown[0]} (valid keys in '{name}': {', '.join(hints)})"
        )
    kwargs = {k: _coerce(f"{name}.{k}", v, hints[k]) for k, v in values.items()}
    return cls(**kwargs)


def from_dict(tree: dict) -> Config:
    if not isinstance(tree, dict):
        raise ConfigError(f"config: expected a mapping of sections, got {type(tree).__name__}")
    sections = _sections()
    unknown = sorted(set(tree) - set(sections))
    if unknown:
        raise ConfigError(
            f"unknown config section '{unknown[0]}' (valid sections: {', '.join(sections)})"
        )
    built = {n: _build_section(n, cls, tree.get(n) or {}) for n, cls in sections.items()}
    return Config(**built)


def to_dict(cfg: Config) -> dict:
    def plain(v):
        return list(v) if isinstance(v, tuple) else v

    return {
        s.name: {k: plain(v) for k, v in dataclasses.asdict(getattr(cfg, s.name)).items()}
        for s in dataclasses.fields(cfg)
    }


def parse_override(arg: str) -> tuple[str, str, object]:
    """'--section.key=value' -> (section, key, value parsed as YAML)."""
    body = arg[2:] if arg.startswith("--") else arg
    if "=" not in body or "." not in body.split("=", 1)[0]:
        raise ConfigError(f"override {arg!r}: expected --section.key=value, e.g. --train.epochs=10")
    dotted, raw = body.split("=", 1)
    section, key = dotted.split(".", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return section, key, value


def load(path: str | Path | None, overrides: list[str] = (), world_size: int = 1) -> Config:
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}")
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path}: expected a mapping of sections")
    for arg in overrides:
        section, key, value = parse_override(arg)
        if section not in _sections():
            raise ConfigError(
                f"unknown config section '{section}' in {arg!r} (valid sections: {', '.join(_sections())})"
            )
        node = tree.setdefault(section, {}) or {}
        tree[section] = node
        node[key] = value
    cfg = from_dict(tree)
    validate(cfg, world_size)
    return cfg


def validate(cfg: Config, world_size: int = 1) -> None:
    from fastcifar.models import check_model_name
    from pipelines import LOADERS

    tree = to_dict(cfg)
    for dotted, choices in CHOICES.items():
        section, key = dotted.split(".")
        if tree[section][key] not in choices:
            raise ConfigError(f"{dotted}: {tree[section][key]!r} is not one of {', '.join(choices)}")
    check_model_name(cfg.model.name)
    if cfg.loader.name not in LOADERS:
        raise ConfigError(f"loader.name: unknown loader {cfg.loader.name!r} (valid: {', '.join(LOADERS)})")

    def need(ok: bool, key: str, what: str):
        if not ok:
            value = tree[key.split(".")[0]][key.split(".")[1]]
            raise ConfigError(f"{key}: {value!r} is invalid: expected {what}")

    a, o, s, t, ld = cfg.augment, cfg.optim, cfg.schedule, cfg.train, cfg.loader
    need(a.crop_padding >= 0, "augment.crop_padding", "an integer >= 0")
    need(0 <= a.flip_p <= 1, "augment.flip_p", "a probability in [0, 1]")
    need(0 <= a.erase_p <= 1, "augment.erase_p", "a probability in [0, 1]")
    need(len(a.erase_scale) == 2 and 0 < a.erase_scale[0] <= a.erase_scale[1] <= 1,
         "augment.erase_scale", "[min, max] with 0 < min <= max <= 1")
    need(len(a.erase_ratio) == 2 and 0 < a.erase_ratio[0] <= a.erase_ratio[1],
         "augment.erase_ratio", "[min, max] with 0 < min <= max")
    need(len(a.mean) == 3, "augment.mean", "3 values, one per channel")
    need(len(a.std) == 3 and all(v > 0 for v in a.std), "augment.std", "3 positive values")
    need(ld.workers >= 0, "loader.workers", "an integer >= 0")
    need(ld.dali_prefetch >= 0, "loader.dali_prefetch", "an integer >= 0 (0: synchronous)")
    need(ld.eval_batch_size > 0, "loader.eval_batch_size", "an integer > 0")
    need(o.lr > 0, "optim.lr", "a learning rate > 0")
    need(0 <= o.momentum < 1, "optim.momentum", "a value in [0, 1)")
    need(not o.nesterov or o.momentum > 0, "optim.nesterov", "false when optim.momentum is 0")
    need(o.weight_decay >= 0, "optim.weight_decay", "a value >= 0")
    need(0 <= o.label_smoothing < 1, "optim.label_smoothing", "a value in [0, 1)")
    need(s.warmup_epochs >= 0, "schedule.warmup_epochs", "a value >= 0")
    need(s.warmup_start_lr >= 0, "schedule.warmup_start_lr", "a value >= 0")
    need(list(s.milestones) == sorted(s.milestones) and all(m >= 0 for m in s.milestones),
         "schedule.milestones", "increasing epochs >= 0")
    need(0 < s.gamma <= 1, "schedule.gamma", "a factor in (0, 1]")
    need(s.final_lr >= 0, "schedule.final_lr", "a value >= 0")
    need(t.epochs > 0, "train.epochs", "an integer > 0")
    need(t.batch_size > 0, "train.batch_size", "an integer > 0")
    need(t.batch_size % world_size == 0, "train.batch_size",
         f"a global batch size divisible by the world size ({world_size})")
    need(ld.eval_batch_size >= world_size, "loader.eval_batch_size", f"at least the world size ({world_size})")
    need(t.eval_every > 0, "train.eval_every", "an integer > 0")
    need(t.checkpoint_every > 0, "train.checkpoint_every", "an integer > 0")
    need(t.keep_checkpoints >= 0, "train.keep_checkpoints", "an integer >= 0 (0 keeps all)")
    need(t.log_every > 0, "train.log_every", "an integer > 0")
    need(t.run_dir != "", "train.run_dir", "a directory path")


# What a run trains: resuming a run under other values would silently mix two recipes. The rest
# (paths, loader, precision, compile, logging) says how to run it and may change, e.g. on another machine.
RECIPE = ("model", "augment", "optim", "schedule", "data.dataset", "train.epochs", "train.batch_size",
          "train.seed")


def recipe_change(saved: dict, cfg: Config) -> str | None:
    """The first recipe key whose value in cfg differs from the saved config tree, as
    'key: saved -> new', or None when the recipes agree. Keys the saved tree lacks (it was
    written before they existed) are not compared."""
    current = to_dict(cfg)
    for entry in RECIPE:
        section, _, only = entry.partition(".")
        for key, value in current[section].items():
            if only and key != only:
                continue
            known = saved.get(section) or {}
            if key not in known:  # saved before the key existed: nothing to compare
                continue
            before = known[key]
            if before != value:
                return f"{section}.{key}: {before!r} -> {value!r}"
    return None


def save(cfg: Config, path: str | Path) -> None:
    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def help_text() -> str:
    """Every key with its type and default, for run.py --help."""
    lines = []
    defaults = to_dict(Config())
    for section, cls in _sections().items():
        lines.append(f"{section}:")
        for key, kind in typing.get_type_hints(cls).items():
            choices = CHOICES.get(f"{section}.{key}")
            kind_name = "list" if typing.get_origin(kind) is tuple else kind.__name__
            extra = f"  one of: {', '.join(choices)}" if choices else ""
            value = yaml.safe_dump(defaults[section][key], default_flow_style=True).strip()
            value = value.removesuffix("...").strip()  # safe_dump ends bare scalars with '...'
            lines.append(f"  --{section}.{key}={value}  ({kind_name}){extra}")
    return "\n".join(lines)
