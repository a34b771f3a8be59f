"""The evaluate command on training runs: the run's own model, data set and normalisation; one-line
errors; the one device resolution; and no import cycles among the package's modules."""

import dataclasses
import json

import pytest
import torch
from conftest import REPO, write_npz

from fastcifar import config as config_lib
from fastcifar import evaluate as evaluate_cli
from fastcifar.distributed import resolve_device
from fastcifar.errors import ConfigError
from fastcifar.models import build_model
from fastcifar.scoring import evaluate_model
from fastcifar.training import checkpoint as ckpt

MEAN, STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)  # CIFAR-100's, not the default


@pytest.fixture(scope="module")
def cifar100_root(tmp_path_factory):
    return write_npz(tmp_path_factory.mktemp("c100"), "cifar100", 10, 60)  # 100 classes, as the name says


def run_config(**model) -> config_lib.Config:
    cfg = config_lib.Config()
    return dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, **{"name": "resnet8", **model}),
        data=dataclasses.replace(cfg.data, dataset="cifar100"),
        augment=dataclasses.replace(cfg.augment, mean=MEAN, std=STD))


def save_run(run_dir, model, cfg, embed: bool):
    """A run directory as the trainer leaves it: the config embedded in the checkpoint, or (older
    checkpoints) only in config.yaml beside it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {"model": {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}
    if embed:
        state["config"] = config_lib.to_dict(cfg)
    else:
        config_lib.save(cfg, run_dir / "config.yaml")
    ckpt.save_checkpoint(ckpt.checkpoint_path(run_dir, 3), state)
    return run_dir


def evaluate(capsys, *args) -> tuple[int, str, str]:
    code = evaluate_cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("embed", [True, False])
def test_a_run_is_scored_with_its_model_dataset_and_normalisation(embed, cifar100_root, tmp_path, capsys, monkeypatch):
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=100, shortcut="B").eval()
    run_dir = save_run(tmp_path / "run", model, run_config(shortcut="B"), embed)
    calls = []

    def spy(*args, **kwargs):
        calls.append(args[6:])  # dataset, mean, std
        return evaluate_model(*args, **kwargs)

    monkeypatch.setattr(evaluate_cli, "evaluate_model", spy)
    code, out, err = evaluate(capsys, "--checkpoint", run_dir, "--data.root", cifar100_root, "--device", "cpu", "--json")
    assert code == 0, err
    assert calls == [("cifar100", MEAN, STD)]
    printed = json.loads(out)
    expected = evaluate_model(model, cifar100_root, dataset="cifar100", mean=MEAN, std=STD)
    assert (printed["top1"], printed["top5"], printed["images"]) == (expected["top1"], expected["top5"], 60)
    assert printed["model"] == "resnet8" and printed["dataset"] == "cifar100"
    code, out, err = evaluate(capsys, "--checkpoint", run_dir, "--data.root", cifar100_root, "--device", "cpu",
                              "--limit", "20")
    assert code == 0 and out.strip().endswith("on 20 CIFAR-100 test images"), (out, err)


def test_a_checkpoint_of_another_depth_is_one_short_line(cifar100_root, tmp_path, capsys):
    state_model = build_model("resnet14", num_classes=100)
    run_dir = save_run(tmp_path / "run", state_model, run_config(), embed=True)  # config says resnet8
    path = ckpt.checkpoint_path(run_dir, 3)
    code, _out, err = evaluate(capsys, "--checkpoint", run_dir, "--data.root", cifar100_root, "--device", "cpu")
    assert code == 2
    assert err == f"evaluate: error: {path} holds a resnet14 state, not resnet8\n"
    code, _out, err = evaluate(capsys, "--model", "cifar10_resnet20", "--checkpoint", path,
                               "--data.root", cifar100_root, "--device", "cpu")
    assert code == 2 and err == f"evaluate: error: {path} holds a resnet14 state, not resnet20\n"


def test_a_weight_file_without_run_config_needs_model(tmp_path, cifar100_root, capsys):
    path = tmp_path / "weights.pt"
    torch.save(build_model("resnet8").state_dict(), path)
    code, _out, err = evaluate(capsys, "--checkpoint", path, "--data.root", cifar100_root)
    assert code == 2 and err.count("\n") == 1
    assert f"--model: {path} holds no run config" in err


def test_a_bad_saved_config_names_the_key_and_file(tmp_path, cifar100_root, capsys):
    run_dir = save_run(tmp_path / "run", build_model("resnet8", num_classes=100), run_config(), embed=False)
    text = (run_dir / "config.yaml").read_text().replace("dataset: cifar100", "dataset: svhn")
    (run_dir / "config.yaml").write_text(text)
    code, _out, err = evaluate(capsys, "--checkpoint", run_dir, "--data.root", cifar100_root)
    assert code == 2 and err.count("\n") == 1
    assert "checkpoint_epoch0003.pt: data.dataset: 'svhn' is not one of cifar10, cifar100" in err
    (run_dir / "config.yaml").write_text(text.replace("svhn", "cifar100").replace("- 0.2673", "- -0.2673"))
    code, _out, err = evaluate(capsys, "--checkpoint", run_dir, "--data.root", cifar100_root)
    assert code == 2 and err.count("\n") == 1 and "checkpoint_epoch0003.pt: augment.std: " in err


def test_evaluate_model_keeps_the_models_mode(cifar100_root):
    model = build_model("resnet8", num_classes=100)
    for training in (False, True):
        model.train(training)
        evaluate_model(model, cifar100_root, limit=10, dataset="cifar100")
        assert all(m.training is training for m in model.modules())
    model.bn1.eval()  # e.g. a frozen BatchNorm in a model being trained: it stays frozen
    evaluate_model(model, cifar100_root, limit=10, dataset="cifar100")
    assert model.training and not model.bn1.training and model.layer1.training


def test_one_device_resolution(monkeypatch, capsys, cifar100_root):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"^--device: 'cuda' needs CUDA, which is not available here"):
        resolve_device("cuda", key="--device")
    with pytest.raises(ConfigError, match=r"^train.device: 'gpu' is not one of auto, cuda, cpu$"):
        resolve_device("gpu")
    code, _out, err = evaluate(capsys, "--checkpoint", "x.pt", "--data.root", cifar100_root, "--device", "cuda")
    assert code == 2 and err.startswith("evaluate: error: --device: 'cuda' needs CUDA") and err.count("\n") == 1


def test_a_run_is_scored_on_its_own_data_root_unless_one_is_given(cifar100_root, tmp_path, capsys, monkeypatch):
    cfg = run_config()
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(cifar100_root)))
    run_dir = save_run(tmp_path / "run", build_model("resnet8", num_classes=100), cfg, embed=False)
    monkeypatch.chdir(tmp_path)  # no ./data here
    code, out, err = evaluate(capsys, "--checkpoint", run_dir, "--device", "cpu", "--json")
    assert code == 0 and json.loads(out)["images"] == 60, err
    code, _out, err = evaluate(capsys, "--checkpoint", run_dir, "--data.root", tmp_path / "elsewhere")
    assert code == 2 and "elsewhere" in err and err.count("\n") == 1


@pytest.fixture
def shipped(synthetic_root, tmp_path):
    """A weights folder shipping one resnet20 weight ('mine', CIFAR statistics), its manifest figure
    measured by evaluate_model; the other hub models ship none."""
    from fastcifar import hub

    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    figure = evaluate_model(model, synthetic_root, mean=mean, std=std)
    weights = tmp_path / "weights"
    hub.add_weight(weights, "cifar10_resnet20", "mine", hub.plain_state(model), {
        "model": "resnet20", "dataset": "cifar10", "source": "mine", "params": 269_722, "mean": list(mean),
        "std": list(std), "test": figure})
    return weights, figure


def test_evaluate_without_a_weight_measures_every_shipped_one(shipped, synthetic_root, capsys):
    from fastcifar import cli

    weights, figure = shipped
    args = ["--weights-dir", weights, "--data.root", synthetic_root, "--device", "cpu"]
    code, out, err = evaluate(capsys, *args, "--json")
    assert code == 0, err
    printed = json.loads(out)
    assert printed["ok"] and len(printed["rows"]) == 6  # one weight, and a row per model without any
    row = printed["rows"][0]
    assert (row["model"], row["source"], row["params"], row["top1"], row["manifest_top1"], row["difference"]) == (
        "cifar10_resnet20", "mine", 269_722, figure["top1"], figure["top1"], 0)
    assert row["paper_error"] == 8.75 and printed["rows"][-1]["note"].startswith("not yet")
    code, out, _err = evaluate(capsys, *args, "--weights", "all")
    assert code == 0 and "| cifar10_resnet20 | mine | 269,722 |" in out and "| +0.00 | 8.75 |" in out
    assert "| cifar10_resnet1202 | not yet: needs the project's own runs |" in out
    assert cli.main(["evaluate", *map(str, args), "--model", "cifar10_resnet20"]) == 0  # the same command
    assert capsys.readouterr().out.count("| cifar10_resnet") == 1


@pytest.mark.parametrize("shift, status", [(0.04, 0), (0.1, 1)])
def test_evaluate_fails_where_a_measurement_is_off_the_manifest(shift, status, shipped, synthetic_root, capsys):
    weights, figure = shipped
    manifest = json.loads((weights / "manifest.json").read_text())
    manifest["weights"]["cifar10_resnet20"]["mine"]["test"]["top1"] = figure["top1"] + shift
    (weights / "manifest.json").write_text(json.dumps(manifest))
    code, out, _err = evaluate(capsys, "--weights-dir", weights, "--data.root", synthetic_root, "--device", "cpu")
    assert code == status and ("(off)" in out) == bool(status)


def test_evaluate_one_weight_by_name(shipped, synthetic_root, capsys):
    weights, figure = shipped
    code, out, err = evaluate(capsys, "--model", "cifar10_resnet20", "--weights", "mine", "--weights-dir", weights,
                              "--data.root", synthetic_root, "--device", "cpu", "--json")
    assert code == 0 and json.loads(out)["top1"] == figure["top1"], err
    code, _out, err = evaluate(capsys, "--weights", "mine", "--weights-dir", weights)
    assert code == 2 and err == "evaluate: error: --weights mine needs --model (or --weights all for every shipped weight)\n"
