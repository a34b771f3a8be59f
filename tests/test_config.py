import subprocess
import sys
from pathlib import Path

import pytest

from fastcifar import config as config_lib
from fastcifar.config import Config
from fastcifar.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yml"))


def load(*overrides, world_size=1):
    return config_lib.load(REPO / "configs" / "resnet20.yml", list(overrides), world_size)


def error_of(*overrides, world_size=1) -> str:
    with pytest.raises(ConfigError) as e:
        load(*overrides, world_size=world_size)
    message = str(e.value)
    assert "\n" not in message
    return message


@pytest.mark.slow
def test_every_config_file_loads_and_mirrors_the_dataclasses():
    assert {p.stem for p in CONFIGS} >= {f"resnet{d}" for d in (20, 32, 44, 56, 110, 1202)}
    defaults = config_lib.to_dict(Config())
    for path in CONFIGS:
        cfg = config_lib.load(path)
        tree = __import__("yaml").safe_load(path.read_text())
        for section, keys in defaults.items():
            assert set(tree[section]) == set(keys), f"{path.name}: section {section} keys differ"
        assert cfg.model.name == path.stem


def test_seed_recipe_values():
    cfg = load()
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.1, 0.9, 1e-4)
    assert cfg.train.batch_size == 128 and cfg.train.epochs == 200
    assert cfg.schedule.name == "multistep" and cfg.schedule.milestones == (100.0, 150.0)
    assert cfg.schedule.warmup_epochs == 10 and cfg.schedule.warmup_start_lr == 1e-5
    assert cfg.optim.label_smoothing == 0.1
    assert cfg.augment.crop_padding == 4 and cfg.augment.flip_p == 0.5 and cfg.augment.erase_p > 0


def test_overrides_are_typed():
    cfg = load("--train.epochs=3", "--optim.lr=1e-3", "--optim.nesterov=true",
               "--schedule.name=cosine", "--schedule.milestones=[5, 7]", "--loader.name=torchvision")
    assert cfg.train.epochs == 3 and cfg.optim.lr == 1e-3 and cfg.optim.nesterov is True
    assert cfg.schedule.milestones == (5.0, 7.0)
    with pytest.raises(Exception):  # frozen
        cfg.train.epochs = 4


@pytest.mark.parametrize("override,key", [
    ("--train.epochz=3", "train.epochz"),
    ("--bogus.key=1", "bogus"),
    ("--train.epochs=ten", "train.epochs"),
    ("--train.epochs=2.5", "train.epochs"),
    ("--optim.nesterov=maybe", "optim.nesterov"),
    ("--optim.lr=-0.1", "optim.lr"),
    ("--train.batch_size=0", "train.batch_size"),
    ("--loader.name=ffcv", "loader.name"),
    ("--train.amp=fp8", "train.amp"),
    ("--model.name=resnet21", "resnet21"),
    ("--augment.erase_scale=[0.5, 0.1]", "augment.erase_scale"),
    ("--augment.flip_p=1.5", "augment.flip_p"),
    ("--schedule.milestones=[150, 100]", "schedule.milestones"),
    ("--data.dataset=mnist", "data.dataset"),
])
def test_bad_values_name_the_key(override, key):
    assert key in error_of(override)


def test_batch_size_must_divide_by_world_size():
    message = error_of("--train.batch_size=128", world_size=3)
    assert "train.batch_size" in message and "world size (3)" in message
    assert load("--train.batch_size=129", world_size=3).train.batch_size == 129


def test_unknown_key_in_file_and_bad_file(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("train:\n  epochs: 1\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key train\.lr"):
        config_lib.load(bad)
    with pytest.raises(ConfigError, match="not found"):
        config_lib.load(tmp_path / "missing.yml")
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config_lib.load(bad)
    with pytest.raises(ConfigError, match="--section.key=value"):
        config_lib.load(None, ["--epochs"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load("--train.epochs=7", "--augment.erase_p=0.25")
    config_lib.save(cfg, tmp_path / "config.yaml")
    assert config_lib.load(tmp_path / "config.yaml") == cfg


def test_help_lists_every_key_with_default():
    text = config_lib.help_text()
    for section, keys in config_lib.to_dict(Config()).items():
        for key in keys:
            assert f"--{section}.{key}=" in text


@pytest.mark.slow
def test_run_py_errors_are_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "run.py", "configs/resnet20.yml", "--train.epochs=-1"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.epochs" in lines[0], result.stderr
    help_run = subprocess.run([sys.executable, "run.py", "--help"], cwd=REPO, capture_output=True,
                              text=True, timeout=120)
    assert help_run.returncode == 0 and "--optim.lr=" in help_run.stdout


def test_recipe_change_names_the_first_recipe_key_that_differs():
    cfg = config_lib.load(None, ["--optim.lr=0.2", "--schedule.milestones=[50, 75]"])
    saved = config_lib.to_dict(cfg)
    assert config_lib.recipe_change(saved, cfg) is None
    moved = {**saved, "data": {**saved["data"], "root": "/elsewhere"}, "loader": {**saved["loader"], "workers": 1}}
    assert config_lib.recipe_change(moved, cfg) is None  # how to run it, not what it trains
    kernel = {**saved, "optim": {**saved["optim"], "implementation": "foreach"}}
    assert config_lib.recipe_change(kernel, cfg) is None  # the same update, another kernel
    other = {**saved, "schedule": {**saved["schedule"], "milestones": [50, 80]}}
    assert config_lib.recipe_change(other, cfg) == "schedule.milestones: [50, 80] -> [50.0, 75.0]"
    older = {**saved, "optim": {k: v for k, v in saved["optim"].items() if k != "no_wd_bn_bias"}}
    assert config_lib.recipe_change(older, cfg) is None  # saved before the key existed


def test_the_recipe_digest_changes_with_the_recipe_only():
    base = config_lib.load(config_lib.recipe_path("fast/resnet56"))
    digest = config_lib.recipe_digest(base)
    elsewhere = config_lib.load(config_lib.recipe_path("fast/resnet56"), [
        "--train.seed=7", "--train.run_dir=/tmp/x", "--data.root=/data", "--loader.name=torchvision",
        "--optim.implementation=foreach", "--train.compile=false"])
    assert config_lib.recipe_digest(elsewhere) == digest  # how and where it runs, and the seed, are not the recipe
    for change in ("--optim.weight_decay=0.001", "--train.epochs=51", "--augment.erase_p=0.5", "--model.shortcut=B"):
        tuned = config_lib.load(config_lib.recipe_path("fast/resnet56"), [change])
        assert config_lib.recipe_digest(tuned) != digest, change


def test_a_saved_config_is_compared_or_refused_when_unreadable(tmp_path):
    """The one reading of a run folder's config.yaml (the trainer's resume=auto and reproduce.py): absent,
    nothing to compare; another recipe, the first key; unreadable, one line naming the file."""
    cfg = config_lib.load(None, ["--optim.lr=0.2"])
    path = tmp_path / "config.yaml"
    assert config_lib.saved_recipe_change(path, cfg) is None
    config_lib.save(cfg, path)
    assert config_lib.saved_recipe_change(path, cfg) is None
    assert config_lib.saved_recipe_change(path, config_lib.load(None, ["--optim.lr=0.3"])) == "optim.lr: 0.2 -> 0.3"
    for text, why in (("optim: [lr: 0.2\n", "ParserError"), ("", "not a mapping"), ("- 1\n", "not a mapping")):
        path.write_text(text)
        with pytest.raises(ConfigError) as error:
            config_lib.saved_recipe_change(path, cfg)
        message = str(error.value)
        assert "\n" not in message and message.startswith(f"{path}: cannot be read as a saved config ({why}"), message
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="UnicodeDecodeError"):
        config_lib.saved_recipe_change(path, cfg)


@pytest.mark.slow
def test_config_loader_names_match_the_registry():
    import typing

    from fastcifar.pipelines import LOADERS

    assert set(config_lib.choices(typing.get_type_hints(config_lib.LoaderConfig)["name"])) == set(LOADERS)


@pytest.mark.slow
def test_help_describes_every_key_and_shows_the_config_files_values():
    text = config_lib.help_text(load("--train.epochs=7"))
    keyed = [line for line in text.splitlines() if line.startswith("  --")]
    assert len(keyed) == sum(len(keys) for keys in config_lib.to_dict(Config()).values())
    import re

    undescribed = [line for line in keyed if not re.match(r"  --\S+=.*  \((one of \S+|str|int|float|bool|list)\) \S", line)]
    assert not undescribed, undescribed
    assert "--train.epochs=7 " in text and "--train.run_dir=runs/resnet20 " in text
    assert "(one of multistep|cosine|onecycle|constant)" in text
    result = subprocess.run([sys.executable, "run.py", "configs/resnet56.yml", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--model.name=resnet56 " in result.stdout


def test_literal_keys_reject_values_outside_their_choices_in_code_built_configs():
    bad = Config(loader=config_lib.LoaderConfig(dtype="float64"))
    with pytest.raises(ConfigError, match=r"loader\.dtype: 'float64' is not one of"):
        config_lib.validate(bad)


def test_run_dir_follows_the_model_unless_set():
    assert load("--model.name=resnet32").train.run_dir == "runs/resnet32"  # was runs/resnet20
    assert config_lib.load("fast/resnet20", ["--model.name=resnet44"]).train.run_dir == "runs/fast-resnet44"
    assert load("--model.name=resnet32", "--train.run_dir=elsewhere").train.run_dir == "elsewhere"
    assert load("--train.run_dir=runs/{model.name}-s{train.seed}", "--train.seed=3").train.run_dir == "runs/resnet20-s3"
    assert config_lib.resolve_run_dir(Config()).train.run_dir == "runs/resnet20"  # built in code
    with pytest.raises(ConfigError, match=r"^train\.run_dir: 'runs/\{modle\.name\}' has a placeholder"):
        load("--train.run_dir=runs/{modle.name}")


def test_an_override_without_its_leading_dashes_is_refused_with_one_line(capsys):
    from fastcifar.cli import train

    with pytest.raises(ConfigError, match=r"^override 'train\.epochs=1': expected --section\.key=value with the "
                                          r"leading '--', e\.g\. --train\.epochs=1$"):
        load("train.epochs=1")
    assert train(["resnet20", "train.epochs=1"], prog="run.py") == 2
    err = capsys.readouterr().err
    assert err == "run.py: error: override 'train.epochs=1': expected --section.key=value with the leading '--', " \
                  "e.g. --train.epochs=1\n"


@pytest.mark.parametrize("command", [["run.py", "--help"],
                                     pytest.param(["benchmarks/throughput.py", "--help"], marks=pytest.mark.slow),
                                     pytest.param(["-m", "fastcifar", "train", "resnet20", "--help"],
                                                  marks=pytest.mark.slow)])
def test_help_into_a_closed_pipe_ends_quietly(command):
    """`run.py --help | head`: the reader goes first; no BrokenPipeError traceback, status 0."""
    import os
    proc = subprocess.Popen([sys.executable, *command], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    proc.stdout.close()  # before the help is printed: every write to it fails
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and err == "", err
