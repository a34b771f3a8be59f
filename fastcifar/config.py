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
from typing import Literal

import yaml

from fastcifar.errors import ConfigError
from fastcifar.files import write_text_atomic

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _key(default, help: str):
    """A config key: its default and the one-line description run.py --help prints."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ModelConfig:
    name: str = _key("resnet20", "resnet20/32/44/56/110/1202, or any resnet<6n+2>")
    shortcut: Literal["A", "B"] = _key("A", "A: subsample + zero-pad (the paper's CIFAR choice); B: 1x1 conv + BN")


@dataclass(frozen=True)
class DataConfig:
    dataset: Literal["cifar10", "cifar100"] = _key("cifar10", "the data set")
    root: str = _key("data", "folder holding the data set (npz, the official layout or its archive)")
    download: bool = _key(True, "download the official archive when nothing is found under root")


@dataclass(frozen=True)
class AugmentConfig:
    """Train-time augmentation, shared by every loader backend. Eval only normalises."""

    crop_padding: int = _key(4, "random 32x32 crop of the zero-padded image; 0 turns it off")
    flip_p: float = _key(0.5, "probability of a horizontal flip")
    erase_p: float = _key(0.5, "probability of random erasing (Zhong et al.), after normalisation")
    erase_scale: tuple[float, ...] = _key((0.02, 0.4), "[min, max] erased fraction of the image area")
    erase_ratio: tuple[float, ...] = _key((0.3, 3.3), "[min, max] aspect ratio of the erased rectangle")
    erase_value: float = _key(0.0, "erasing fill, in normalised units (0 = the data set's mean colour)")
    mean: tuple[float, ...] = _key(CIFAR10_MEAN, "per-channel mean on the 0-1 scale, subtracted")
    std: tuple[float, ...] = _key(CIFAR10_STD, "per-channel std on the 0-1 scale, divided by")


# Kept in step with pipelines.LOADERS (a test checks): the config names the backends without
# importing them, so the loaders can import the config.
LoaderName = Literal["dali", "torch-gpu", "torchvision"]
DeviceName = Literal["auto", "cuda", "cpu"]  # train.device, and the --device option of the commands


@dataclass(frozen=True)
class LoaderConfig:
    name: LoaderName = _key("torchvision", "the loader backend")
    device: Literal["auto", "gpu", "cpu"] = _key(
        "auto", "where a GPU-capable loader runs; auto follows train.device")
    workers: int = _key(4, "CPU worker processes (torchvision) or CPU threads (dali), at most this process's "
                           "share of the usable CPUs")
    eval_batch_size: int = _key(1000, "global evaluation batch size")
    dtype: Literal["float32", "float16", "bfloat16"] = _key("float32", "dtype of the images handed to the model")
    dali_prefetch: int = _key(0, "dali: pipeline runs queued besides the next one, always scheduled ahead")
    dali_batches_per_run: int = _key(8, "dali: batches produced by one pipeline run, one DALI sample each")
    dali_crop: Literal["multi_paste", "warp_affine"] = _key(
        "multi_paste", "dali: the crop-and-flip operator, one per batch; both give the same images")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = _key(0.1, "peak learning rate for the global batch")
    momentum: float = _key(0.9, "SGD momentum")
    nesterov: bool = _key(False, "Nesterov momentum")
    weight_decay: float = _key(1e-4, "L2 weight decay")
    no_wd_bn_bias: bool = _key(False, "exempt BatchNorm weights and all biases from weight decay")
    label_smoothing: float = _key(0.1, "label smoothing of the cross-entropy loss")
    implementation: Literal["auto", "fused", "foreach", "for-loop"] = _key(
        "auto", "SGD kernel: auto is fused where torch has it for the device (CUDA), else foreach")


@dataclass(frozen=True)
class ScheduleConfig:
    name: Literal["multistep", "cosine", "onecycle", "constant"] = _key(
        "multistep", "learning-rate schedule after the warm-up, updated every step")
    warmup_epochs: float = _key(10.0, "linear warm-up length in epochs (0: none)")
    warmup_start_lr: float = _key(1e-5, "learning rate at the first step of the warm-up")
    milestones: tuple[float, ...] = _key((100.0, 150.0), "multistep: epochs at which the lr is multiplied by gamma")
    gamma: float = _key(0.1, "multistep: the factor at each milestone")
    final_lr: float = _key(0.0, "cosine and onecycle: the learning rate at the end")


RUN_DIR = "runs/{model.name}"  # follows an overridden model.name (--model.name=resnet32 -> runs/resnet32)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _key(200, "training epochs")
    batch_size: int = _key(128, "global batch size, over all ranks")
    seed: int = _key(0, "seeds the model, the shuffle and every augmentation draw")
    deterministic: bool = _key(False, "deterministic algorithms (bit-exact reruns on CPU; refused on CUDA)")
    device: DeviceName = _key("auto", "training device; auto is CUDA when present")
    amp: Literal["auto", "bf16", "fp16", "none"] = _key("auto", "autocast dtype; auto is bf16 on CUDA, none on CPU")
    channels_last: bool = _key(True, "NHWC memory format for the model and its inputs")
    compile: Literal["auto", "true", "false"] = _key("auto", "torch.compile the model; auto is on CUDA only")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = _key(
        "default", "torch.compile mode")
    cuda_graph: Literal["auto", "true", "false"] = _key(
        "false", "CUDA graphs of the whole train step and eval forward; auto: on CUDA, 1 process, amp not fp16")
    max_steps: int = _key(0, "cut the run short after this many optimizer steps in all, e.g. a smoke run (0: no limit)")
    eval_every: int = _key(1, "epochs between evaluations; the last epoch is always evaluated")
    checkpoint_every: int = _key(10, "epochs between checkpoints; the last and a stopped epoch are always saved")
    checkpoint_minutes: float = _key(
        10.0, "minutes between mid-epoch recovery checkpoints (the newest one kept), the most a kill -9 "
        "loses; 0: off")
    keep_checkpoints: int = _key(0, "keep only the newest N checkpoints; 0 keeps all")
    log_every: int = _key(50, "steps between host syncs for logging")
    run_dir: str = _key(RUN_DIR, "where config, metrics, checkpoints and summary are written; {model.name} "
                        "(any {section.key}) is replaced by that key's value")
    resume: Literal["false", "true", "auto"] = _key(
        "false", "continue run_dir from its newest readable checkpoint (run.py --resume); auto: when it "
        "holds one, else start fresh (a requeued job)")
    progress: bool = _key(True, "rank 0: a progress bar on a terminal, else a line every log_every steps")
    threads: int = _key(0, "torch's intra-op CPU threads; 0: OMP_NUM_THREADS when set, else this process's "
                           "share of the usable CPUs, less those other processes keep busy at the start")
    tensorboard: bool = _key(False, "also write TensorBoard scalars to run_dir/tensorboard (rank 0; "
                                    "pip install tensorboard)")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def choices(kind) -> tuple | None:
    """The allowed values of a Literal-typed key, else None."""
    return typing.get_args(kind) if typing.get_origin(kind) is Literal else None


def _sections() -> dict[str, type]:
    return {f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)}


def _coerce(key: str, value, kind):
    """Check one value against its declared type; ints may stand for floats, YAML's '1e-5' too."""
    origin = typing.get_origin(kind)
    allowed = choices(kind)
    if allowed is not None:
        value = _coerce(key, value, type(allowed[0]))
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(allowed)}")
        return value
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
    return resolve_run_dir(Config(**built))


def resolve_run_dir(cfg: Config) -> Config:
    """train.run_dir with its {section.key} placeholders filled in from cfg (the saved config.yaml
    holds the resolved path, so a resume finds the same directory)."""
    template = cfg.train.run_dir
    try:
        path = template.format(**{s.name: getattr(cfg, s.name) for s in dataclasses.fields(cfg)})
    except (KeyError, AttributeError, IndexError, ValueError) as e:
        raise ConfigError(f"train.run_dir: {template!r} has a placeholder that names no config key ({e}); "
                          "use e.g. runs/{model.name}") from None
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, run_dir=path))


def to_dict(cfg: Config) -> dict:
    def plain(v):
        return list(v) if isinstance(v, tuple) else v

    return {
        s.name: {k: plain(v) for k, v in dataclasses.asdict(getattr(cfg, s.name)).items()}
        for s in dataclasses.fields(cfg)
    }


def parse_override(arg: str) -> tuple[str, str, object]:
    """'--section.key=value' -> (section, key, value parsed as YAML). Without the leading '--' it is
    refused, not taken silently: 'train.epochs=1' reads like a stray positional argument."""
    if not arg.startswith("--"):
        raise ConfigError(f"override {arg!r}: expected --section.key=value with the leading '--', "
                          f"e.g. --{arg if '=' in arg else 'train.epochs=10'}")
    body = arg[2:]
    if "=" not in body or "." not in body.split("=", 1)[0]:
        raise ConfigError(f"override {arg!r}: expected --section.key=value, e.g. --train.epochs=10")
    dotted, raw = body.split("=", 1)
    section, key = dotted.split(".", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return section, key, value


RECIPES = Path(__file__).resolve().parent / "configs"  # shipped with the package; configs/ in a clone links here


def recipes() -> list[str]:
    """The shipped recipes by name: resnet20, ..., fast/resnet20, ..."""
    return sorted(p.relative_to(RECIPES).with_suffix("").as_posix() for p in RECIPES.rglob("*.yml"))


def recipe_path(name_or_path: str | Path) -> Path:
    """A config file's path, or a shipped recipe's by name ('resnet56', 'fast/resnet56')."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = path.relative_to("configs") if path.parts[:1] == ("configs",) else path  # the clone's link
    shipped = RECIPES / name.with_suffix(".yml") if path.suffix in ("", ".yml") else None
    if shipped is not None and not path.is_absolute() and shipped.is_file():
        return shipped
    raise ConfigError(f"config file {path} not found (give a YAML file, or a shipped recipe by name: "
                      f"{', '.join(recipes())})")


def load(path: str | Path | None, overrides: list[str] = (), world_size: int = 1) -> Config:
    tree: dict = {}
    if path is not None:
        path = recipe_path(path)
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

    tree = to_dict(cfg)
    for section, cls in _sections().items():  # also for configs built in code, not parsed
        for key, kind in typing.get_type_hints(cls).items():
            allowed = choices(kind)
            if allowed is not None and tree[section][key] not in allowed:
                raise ConfigError(f"{section}.{key}: {tree[section][key]!r} is not one of {', '.join(allowed)}")
    check_model_name(cfg.model.name)

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
    need(ld.dali_prefetch >= 0, "loader.dali_prefetch", "an integer >= 0")
    need(ld.dali_batches_per_run > 0, "loader.dali_batches_per_run", "an integer > 0")
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
    need(t.max_steps >= 0, "train.max_steps", "an integer >= 0 (0: no limit)")
    need(t.keep_checkpoints >= 0, "train.keep_checkpoints", "an integer >= 0 (0 keeps all)")
    need(t.log_every > 0, "train.log_every", "an integer > 0")
    need(t.checkpoint_minutes >= 0, "train.checkpoint_minutes", "minutes >= 0 (0: off)")
    need(t.run_dir != "", "train.run_dir", "a directory path")
    need(t.threads >= 0, "train.threads", "an integer >= 0 (0: sized to the usable CPUs)")


# What a run trains: resuming a run under other values would silently mix two recipes. The rest
# (paths, loader, precision, compile, logging) says how to run it and may change, e.g. on another machine.
RECIPE = ("model", "augment", "optim", "schedule", "data.dataset", "train.epochs", "train.batch_size",
          "train.seed")
# Inside a recipe section, but how to run it: every SGD kernel makes the same update and state.
NOT_RECIPE = ("optim.implementation",)


def recipe_change(saved: dict, cfg: Config) -> str | None:
    """The first recipe key whose value in cfg differs from the saved config tree, as
    'key: saved -> new', or None when the recipes agree. Keys the saved tree lacks (it was
    written before they existed) are not compared."""
    current = to_dict(cfg)
    for entry in RECIPE:
        section, _, only = entry.partition(".")
        for key, value in current[section].items():
            if (only and key != only) or f"{section}.{key}" in NOT_RECIPE:
                continue
            known = saved.get(section) or {}
            if key not in known:  # saved before the key existed: nothing to compare
                continue
            before = known[key]
            if before != value:
                return f"{section}.{key}: {before!r} -> {value!r}"
    return None


def recipe_digest(cfg: Config) -> str:
    """A short hash of what cfg trains (its RECIPE keys but the seed): runs of one recipe, wherever its file
    lives and whatever seed, share it; a recipe file that changed (tuned) gets another."""
    import hashlib
    import json

    tree, picked = to_dict(cfg), {}
    for entry in RECIPE:
        section, _, only = entry.partition(".")
        for key, value in tree[section].items():
            if (not only or key == only) and f"{section}.{key}" not in (*NOT_RECIPE, "train.seed"):
                picked[f"{section}.{key}"] = value
    return hashlib.sha256(json.dumps(picked, sort_keys=True, default=str).encode()).hexdigest()[:16]


def saved_recipe_change(path: str | Path, cfg: Config) -> str | None:
    """recipe_change against the config.yaml of a run directory; None when there is no such file. A file
    that is not a readable config tree is refused: the recipe of the run beside it cannot be known, and
    starting or resuming there could mix two recipes in one run."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        tree = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        tree = e
    if not isinstance(tree, dict):
        why = f"{type(tree).__name__}" if isinstance(tree, Exception) else "not a mapping of config sections"
        raise ConfigError(f"{path}: cannot be read as a saved config ({why}), so the recipe of the run there "
                          "is unknown; restore or remove that file, or choose another run folder")
    return recipe_change(tree, cfg)


def save(cfg: Config, path: str | Path) -> None:
    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def help_text(cfg: Config | None = None) -> str:
    """Every key with its description, type and value in cfg (default: the built-in defaults),
    for run.py --help."""
    lines = []
    values = to_dict(cfg or Config())
    for section, cls in _sections().items():
        lines.append(f"{section}:")
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = hints[f.name]
            allowed = choices(kind)
            kind_name = ("list" if typing.get_origin(kind) is tuple
                         else "one of " + "|".join(allowed) if allowed else kind.__name__)
            value = yaml.safe_dump(values[section][f.name], default_flow_style=True).strip()
            value = value.removesuffix("...").strip()  # safe_dump ends bare scalars with '...'
            lines.append(f"  --{section}.{f.name}={value}  ({kind_name}) {f.metadata.get('help', '')}".rstrip())
    return "\n".join(lines)
