"""Shipped weights, the hub entry points and the evaluate command."""

import json
import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from fastcifar import hub
from fastcifar.evaluate import evaluate_model
from fastcifar.models import build_model
from fastcifar.training import checkpoint as ckpt


def test_every_hub_entry_point_builds_its_model_from_a_local_clone():
    for name, arch in hub.HUB_MODELS.items():
        if name == "cifar10_resnet1202":
            continue  # 19M parameters: slow to initialise, and built the same way as the rest
        model = torch.hub.load(str(REPO), name, source="local", trust_repo=True)
        reference = build_model(arch)
        assert [tuple(p.shape) for p in model.parameters()] == [tuple(p.shape) for p in reference.parameters()]


def test_pretrained_without_shipped_weights_is_a_clear_error(tmp_path):
    with pytest.raises(hub.HubError, match=r"no pretrained weights for cifar10_resnet20 .*shipped: none yet"):
        hub.get_model("cifar10_resnet20", pretrained=True, weights_dir=tmp_path)
    with pytest.raises(hub.HubError, match=r"unknown hub model 'cifar10_resnet21' \(valid: cifar10_resnet20"):
        hub.get_model("cifar10_resnet21")


@pytest.fixture
def exported(synthetic_root, tmp_path):
    """A resnet20 saved as DDP would save it ('module.' prefixes, inside a training checkpoint),
    exported as shipped weights into a temporary weights folder."""
    torch.manual_seed(0)
    model = build_model("resnet20")
    with torch.no_grad():  # BN statistics that are not the defaults, so a lost buffer shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    prefixed = {f"module.{k}": v for k, v in model.state_dict().items()}
    ckpt.save_checkpoint(ckpt.checkpoint_path(run_dir, 200), {"model": prefixed, "epoch": 200})
    weights = tmp_path / "weights"
    entry = hub.export_weights(run_dir, "cifar10_resnet20", synthetic_root, weights, record={"seed": 1})
    return model, weights, entry


@pytest.mark.slow
def test_exported_weights_load_strictly_and_reproduce_their_accuracy(exported, synthetic_root):
    model, weights, entry = exported
    path = weights / entry["file"]
    assert path.name == f"cifar10_resnet20-{hub.sha256(path)[:8]}.pt" and entry["sha256"] == hub.sha256(path)
    state = torch.load(path, weights_only=True)
    assert all(not k.startswith(("module.", "_orig_mod.")) for k in state)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    loaded = hub.get_model("cifar10_resnet20", pretrained=True, weights_dir=weights).eval()
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)
    manifest = json.loads((weights / "manifest.json").read_text())
    assert manifest["weights"]["cifar10_resnet20"]["run"] == {"seed": 1}
    assert entry["test"]["images"] == 200 and entry["test_first_1000"]["images"] == 200  # 200 synthetic test images
    again = evaluate_model(loaded, synthetic_root)
    assert again == entry["test"]


@pytest.mark.slow
def test_tampered_weights_are_refused(exported):
    _model, weights, entry = exported
    path = weights / entry["file"]
    state = torch.load(path, weights_only=True)
    state["fc.bias"] += 1
    torch.save(state, path)
    with pytest.raises(hub.HubError, match="has sha256 .* but manifest.json expects"):
        hub.get_model("cifar10_resnet20", pretrained=True, weights_dir=weights)


@pytest.mark.slow
def test_exporting_a_checkpoint_of_another_depth_fails_before_writing(exported, tmp_path, synthetic_root):
    _model, weights, _entry = exported
    with pytest.raises(hub.HubError, match=r"checkpoint_epoch0200.pt holds a resnet20 state, not resnet32$"):
        hub.export_weights(tmp_path / "run", "cifar10_resnet32", synthetic_root, weights)
    assert "cifar10_resnet32" not in hub.read_manifest(weights)["weights"]


@pytest.mark.parametrize("section, values, key", [
    ("augment", {"mean": [0.5, 0.5, 0.5]}, "augment.mean"), ("model", {"shortcut": "B"}, "model.shortcut"),
    ("data", {"dataset": "cifar100"}, "data.dataset")])
@pytest.mark.slow
def test_a_run_trained_unlike_the_hub_models_is_not_shipped(exported, tmp_path, synthetic_root, section, values, key):
    from fastcifar import config as config_lib

    model, weights, _entry = exported
    tree = config_lib.to_dict(config_lib.Config())
    path = ckpt.checkpoint_path(tmp_path / "run", 200)
    ckpt.save_checkpoint(path, {"model": model.state_dict(), "epoch": 200, "config": tree})
    assert hub.export_weights(path, "cifar10_resnet20", synthetic_root, tmp_path / "ok")  # the defaults ship
    tree[section].update(values)
    ckpt.save_checkpoint(path, {"model": model.state_dict(), "epoch": 200, "config": tree})
    with pytest.raises(hub.HubError, match=rf"^{re.escape(str(path))}: {re.escape(key)} is .* but shipped weights "
                                           r"need .*fastcifar.evaluate` instead$"):
        hub.export_weights(path, "cifar10_resnet20", synthetic_root, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def run_evaluate(*args):
    return subprocess.run([sys.executable, "-m", "fastcifar.evaluate", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_evaluate_command_prints_top1_and_top5(exported, synthetic_root):
    _model, weights, entry = exported
    result = run_evaluate("--model", "cifar10_resnet20", "--pretrained", "--weights-dir", str(weights),
                          "--data.root", str(synthetic_root), "--device", "cpu", "--json")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert (printed["top1"], printed["top5"], printed["images"]) == tuple(entry["test"][k] for k in ("top1", "top5", "images"))
    assert printed["weights"] == entry["file"]
    checkpoint = run_evaluate("--model", "cifar10_resnet20", "--checkpoint", str(weights / entry["file"]),
                              "--data.root", str(synthetic_root), "--device", "cpu", "--limit", "50")
    assert checkpoint.returncode == 0, checkpoint.stderr
    assert "top-1" in checkpoint.stdout and "on 50 CIFAR-10 test images" in checkpoint.stdout


@pytest.mark.parametrize("args, message", [
    (["--model", "cifar10_resnet21", "--pretrained"], "unknown hub model 'cifar10_resnet21'"),
    (["--model", "cifar10_resnet56", "--pretrained", "--weights-dir", "{tmp}"], "no pretrained weights for cifar10_resnet56"),
    (["--model", "cifar10_resnet20", "--checkpoint", "{tmp}/none.pt"], "none.pt not found"),
    (["--model", "cifar10_resnet20", "--pretrained", "--limit", "0"], "--limit: 0 is invalid"),
])
@pytest.mark.slow
def test_evaluate_errors_are_one_line(args, message, tmp_path, synthetic_root):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = run_evaluate(*args, "--data.root", str(synthetic_root))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


@pytest.mark.slow
def test_evaluate_without_data_names_the_folder(exported, tmp_path):
    _model, weights, _entry = exported
    result = run_evaluate("--model", "cifar10_resnet20", "--pretrained", "--weights-dir", str(weights),
                          "--data.root", str(tmp_path / "nothing"))
    assert result.returncode == 2 and "CIFAR-10 not found under" in result.stderr, result.stderr


SHIPPED = sorted(hub.read_manifest()["weights"].items())


@pytest.mark.parametrize("name, entry", SHIPPED or [pytest.param(None, None, marks=pytest.mark.skip(
    reason="no weights shipped yet: fastcifar/weights/manifest.json lists none"))])
def test_shipped_weights_load_strictly_and_reach_their_recorded_accuracy(name, entry, real_cifar_root):
    model = hub.get_model(name, pretrained=True)  # sha256 checked, strict load
    recorded = entry[f"test_first_{hub.SUBSET}"]
    measured = evaluate_model(model, real_cifar_root, limit=hub.SUBSET)
    assert measured["images"] == recorded["images"] == hub.SUBSET
    # the same fp32 arithmetic; another CPU may sum in another order and flip an image or two
    assert abs(measured["top1"] - recorded["top1"]) <= 0.3 and abs(measured["top5"] - recorded["top5"]) <= 0.3


def test_a_failed_export_leaves_no_file(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ckpt.save_checkpoint(ckpt.checkpoint_path(run_dir, 1), {"model": build_model("resnet20").state_dict()})
    with pytest.raises(Exception, match="CIFAR-10 not found under"):
        hub.export_weights(run_dir, "cifar10_resnet20", tmp_path / "no-data", tmp_path / "weights")
    assert not (tmp_path / "weights").exists() or not any((tmp_path / "weights").iterdir())


@pytest.mark.slow
def test_shipped_weights_of_another_model_are_a_one_line_error(exported):
    _model, weights, entry = exported
    path = weights / entry["file"]
    torch.save(build_model("resnet32").state_dict(), path)
    manifest = json.loads((weights / "manifest.json").read_text())
    manifest["weights"]["cifar10_resnet20"]["sha256"] = hub.sha256(path)
    (weights / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(hub.HubError, match=rf"^{re.escape(str(path))} holds a resnet32 state, not resnet20$") as info:
        hub.get_model("cifar10_resnet20", pretrained=True, weights_dir=weights)
    assert "\n" not in str(info.value)


def test_a_state_of_another_model_is_named_in_one_short_line():
    model = build_model("resnet20")
    cases = [
        (build_model("resnet20", num_classes=100).state_dict(), "holds a resnet20 (100 classes) state, not resnet20 (10 classes)"),
        (build_model("resnet20", shortcut="B").state_dict(), "holds a resnet20 (shortcut B) state, not resnet20 (shortcut A)"),
        (build_model("resnet110").state_dict(), "holds a resnet110 state, not resnet20"),
        ({"weight": torch.zeros(2)}, "does not hold a CIFAR ResNet state dict"),
    ]
    for state, message in cases:
        with pytest.raises(hub.HubError) as info:
            hub.load_into(model, state, "w.pt")
        assert str(info.value) == f"w.pt {message}"
