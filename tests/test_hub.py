"""Shipped weights, the hub entry points and the evaluate command."""

import json
import re
import subprocess
import sys

import numpy as np
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
    with pytest.raises(hub.HubError, match=r"^no pretrained weights for cifar10_resnet20 in .*: not yet: needs the "
                                           r"project's own runs \(benchmarks/reproduce.py, then benchmarks/export_weights.py\)$"):
        hub.get_model("cifar10_resnet20", pretrained=True, weights_dir=tmp_path)
    # the error and the README name the same script, and it exists (issue #22)
    assert "benchmarks/export_weights.py" in (REPO / "README.md").read_text()
    assert (REPO / "benchmarks" / "export_weights.py").is_file()
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
    assert path.name == f"cifar10_resnet20-fastcifar-{hub.sha256(path)[:8]}.pt" and entry["sha256"] == hub.sha256(path)
    state = torch.load(path, weights_only=True)
    assert all(not k.startswith(("module.", "_orig_mod.")) for k in state)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    loaded = hub.get_model("cifar10_resnet20", pretrained=True, weights_dir=weights).eval()
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)
    manifest = json.loads((weights / "manifest.json").read_text())
    assert manifest["schema_version"] == 2 and manifest["weights"]["cifar10_resnet20"]["fastcifar"]["run"] == {"seed": 1}
    assert entry["params"] == 269_722 and entry["source"] == "fastcifar"  # ResNet-20's count (test_models)
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
    ("model", {"shortcut": "B"}, "model.shortcut"), ("data", {"dataset": "cifar100"}, "data.dataset")])
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


SHIPPED = [(m, w, e) for m, named in sorted(hub.read_manifest()["weights"].items()) for w, e in sorted(named.items())]
NONE_SHIPPED = [pytest.param(None, None, None, marks=pytest.mark.skip(reason="fastcifar/weights/manifest.json lists none"))]
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
# Measured independently of this project's code, on the same test set: ../shared/weights/akamaster/README.md
# (9173, 9263, 9311 and 9339 of 10,000 images).
AKAMASTER_TOP1 = {"cifar10_resnet20": 91.73, "cifar10_resnet32": 92.63, "cifar10_resnet44": 93.11,
                  "cifar10_resnet56": 93.39}


def test_the_akamaster_weights_ship_with_their_facts_and_licence():
    shipped = hub.read_manifest()["weights"]
    assert set(shipped) == set(AKAMASTER_TOP1)  # ResNet-110/1202: not yet
    for name, top1 in AKAMASTER_TOP1.items():
        entry = shipped[name]["akamaster"]
        assert abs(entry["test"]["top1"] - top1) <= hub.TOLERANCE and entry["test"]["images"] == 10_000
        assert [entry["mean"], entry["std"]] == list(IMAGENET) and entry["dataset"] == "cifar10"
        assert entry["source_repository"] == "akamaster/pytorch_resnet_cifar10"
        assert entry["source_commit"] == "d5489e8995e81e91ce6b1d69dcc98ad579b0b153"
        assert entry["params"] == sum(p.numel() for p in build_model(hub.model_name(name)).parameters())
        assert entry["measured"]["test_set_sha256"] and entry["measured"]["torch"]
        assert entry["license"].startswith("BSD-2-Clause") and entry["license_file"] == "LICENSE.akamaster"
        assert (hub.WEIGHTS_DIR / entry["file"]).is_file() and entry["file"].endswith(f"-{entry['sha256'][:8]}.pt")
    notice = (hub.WEIGHTS_DIR / "LICENSE.akamaster").read_text()
    assert "Copyright (c) 2018, Yerlan Idelbayev" in notice and "Redistributions in binary form" in notice


@pytest.mark.parametrize("name, weight, entry", SHIPPED or NONE_SHIPPED)
def test_shipped_weights_reach_their_recorded_accuracy_on_the_first_1000_test_images(name, weight, entry,
                                                                                      real_cifar_root):
    from fastcifar.data import load_cifar
    from fastcifar.manifest import data_digest

    test = load_cifar("cifar10", real_cifar_root, "test")  # the figures were measured on these very images
    assert data_digest(test.images, test.labels) == entry["measured"]["test_set_sha256"]
    model = hub.get_model(name, weights=weight)  # sha256 checked, strict load
    recorded = entry[f"test_first_{hub.SUBSET}"]
    measured = evaluate_model(model, real_cifar_root, limit=hub.SUBSET, mean=entry["mean"], std=entry["std"])
    assert measured["images"] == recorded["images"] == hub.SUBSET
    assert abs(measured["top1"] - recorded["top1"]) <= hub.TOLERANCE
    assert abs(measured["top5"] - recorded["top5"]) <= hub.TOLERANCE


@pytest.mark.slow
def test_evaluate_re_measures_every_shipped_weight_on_the_whole_test_set(real_cifar_root, capsys):
    from fastcifar import evaluate as evaluate_cli

    if not SHIPPED:
        pytest.skip("fastcifar/weights/manifest.json lists none")
    code = evaluate_cli.main(["--data.root", str(real_cifar_root), "--device", "cpu", "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert code == 0 and printed["ok"], printed
    rows = {(r["model"], r["source"]): r for r in printed["rows"]}
    for name, weight, entry in SHIPPED:
        row = rows[name, weight]
        assert row["images"] == 10_000 and row["params"] == entry["params"]
        assert abs(row["top1"] - entry["test"]["top1"]) <= 0.05 and abs(row["top5"] - entry["test"]["top5"]) <= 0.05
        if weight == "akamaster":  # and the figure measured without this project's code
            assert abs(row["top1"] - AKAMASTER_TOP1[name]) <= 0.05
    assert rows["cifar10_resnet110", None]["paper_error"] == 6.61 and rows["cifar10_resnet1202", None]["note"]


@pytest.mark.parametrize("name", sorted(AKAMASTER_TOP1))
def test_torch_hub_loads_the_default_weights_strictly(name):
    if name not in hub.read_manifest()["weights"]:
        pytest.skip(f"no weights shipped for {name}")
    chosen = hub.weights_enum(name).DEFAULT
    by_hub = torch.hub.load(str(REPO), name, source="local", trust_repo=True, pretrained=True)
    by_name = torch.hub.load(str(REPO), name, source="local", trust_repo=True, weights=chosen.meta["name"])
    raw = torch.load(hub.WEIGHTS_DIR / chosen.meta["file"], weights_only=True)
    assert set(raw) == set(by_hub.state_dict())  # strict: no key left over on either side
    assert hub.get_weight(f"{type(chosen).__name__}.DEFAULT") is getattr(hub, type(chosen).__name__).DEFAULT
    assert hub.get_weight(f"{type(chosen).__name__}.DEFAULT").meta["sha256"] == chosen.meta["sha256"]
    for model in (by_hub, by_name):
        assert all(torch.equal(v, raw[k]) for k, v in model.state_dict().items())


def test_weights_transforms_classify_real_test_images(real_cifar_root):
    from PIL import Image

    from fastcifar.data import load_cifar

    if not SHIPPED:
        pytest.skip("fastcifar/weights/manifest.json lists none")
    test = load_cifar("cifar10", real_cifar_root, "test")
    weights = hub.CIFAR10_ResNet56_Weights.DEFAULT
    model = hub.resnet56(weights=weights).eval()
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (weights.meta["mean"], weights.meta["std"]))
    correct = 0
    with torch.no_grad():
        for image, label in zip(test.images[:20], test.labels[:20]):
            x = weights.transforms()(Image.fromarray(image))
            by_hand = (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - mean) / std
            torch.testing.assert_close(x, by_hand)
            logits = model(x)  # one unbatched image
            assert logits.shape == (10,)
            correct += int(logits.argmax()) == int(label)
    assert correct >= 19, correct  # 93% top-1: at most one miss in 20 is expected
    assert weights.meta["categories"][int(test.labels[0])] == "cat"  # CIFAR-10's first test image


def test_multi_weight_api(exported):
    _model, weights, entry = exported
    state = torch.load(weights / entry["file"], weights_only=True)
    better = {k: v for k, v in entry.items() if k not in ("file", "sha256")}
    better["test"] = {**entry["test"], "top1": entry["test"]["top1"] + 1}
    original = state["fc.bias"].clone()
    state["fc.bias"] += 1  # another file
    hub.add_weight(weights, "cifar10_resnet20", "other-run", state, better)
    enum = hub.weights_enum("cifar10_resnet20", weights)
    assert enum.__name__ == "CIFAR10_ResNet20_Weights" and [m.name for m in enum] == ["FASTCIFAR", "OTHER_RUN"]
    assert enum.DEFAULT is enum.OTHER_RUN  # the highest measured top-1
    assert enum.verify("other-run") is enum.verify("OTHER_RUN") is enum.verify("CIFAR10_ResNet20_Weights.OTHER_RUN")
    meta = enum.FASTCIFAR.meta
    assert meta["_metrics"]["CIFAR-10"]["acc@1"] == entry["test"]["top1"] and meta["num_params"] == 269_722
    assert meta["source"] == "fastcifar" and meta["license"] and meta["sha256"] == entry["sha256"]
    default = hub.get_model("cifar10_resnet20", pretrained=True, weights_dir=weights)
    chosen = hub.get_model("cifar10_resnet20", weights="fastcifar", weights_dir=weights)
    assert torch.equal(default.fc.bias, state["fc.bias"]) and torch.equal(chosen.fc.bias, original)
    assert torch.equal(hub.get_model("cifar10_resnet20", weights=enum.FASTCIFAR, weights_dir=weights).fc.bias,
                       chosen.fc.bias)
    with pytest.raises(hub.HubError, match=r"^weights='seed9': no such weights for CIFAR10_ResNet20_Weights "
                                           r"\(valid: fastcifar, other-run, DEFAULT\)$"):
        hub.get_model("cifar10_resnet20", weights="seed9", weights_dir=weights)
    with pytest.raises(hub.HubError, match=r"are not cifar10_resnet32's \(expected CIFAR10_ResNet32_Weights\)$"):
        hub.get_model("cifar10_resnet32", weights=enum.FASTCIFAR, weights_dir=weights)


def test_a_runs_normalisation_ships_with_its_weights(exported, tmp_path, synthetic_root):
    from PIL import Image

    from fastcifar import config as config_lib

    model, _weights, _entry = exported
    tree = config_lib.to_dict(config_lib.Config())
    tree["augment"].update(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    path = ckpt.checkpoint_path(tmp_path / "run2", 200)
    path.parent.mkdir()
    ckpt.save_checkpoint(path, {"model": model.state_dict(), "epoch": 200, "config": tree})
    entry = hub.export_weights(path, "cifar10_resnet20", synthetic_root, tmp_path / "w")
    assert (entry["mean"], entry["std"]) == ([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    assert entry["test"] == evaluate_model(model, synthetic_root, mean=(0.5,) * 3, std=(0.25,) * 3)
    weights = hub.weights_enum("cifar10_resnet20", tmp_path / "w").DEFAULT
    pixel = Image.fromarray(np.full((32, 32, 3), 255, np.uint8))
    torch.testing.assert_close(weights.transforms()(pixel), torch.full((3, 32, 32), 2.0))  # (1 - 0.5) / 0.25
    torch.testing.assert_close(weights.transforms()(np.full((32, 32, 3), 255, np.uint8)), torch.full((3, 32, 32), 2.0))


def test_the_readme_table_is_generated_from_the_manifest():
    from conftest import tables

    from fastcifar import manifest

    readme = (REPO / "README.md").read_text()
    section = readme.split("<!-- BEGIN GENERATED: pretrained -->\n", 1)[1].split("\n<!-- END GENERATED: pretrained -->")[0]
    assert section == manifest.readme_markdown(hub.read_manifest())  # regenerated: benchmarks/report.py --readme
    fake = {"weights": {"cifar10_resnet20": {
        "a": {"test": {"top1": 90.0, "top5": 99.0}, "params": 269_722, "license": "MIT (x)"},
        "b": {"test": {"top1": 91.5, "top5": 99.5}, "params": 269_722, "license": "BSD-2-Clause (y)",
              "license_file": "LICENSE.b"}}}}
    text = manifest.readme_markdown(fake)
    rows = tables(text)[0]
    assert [(r["model"], r["weights"], r["top-1 (measured)"], r["licence"]) for r in rows[:2]] == [
        ("`cifar10_resnet20`", "`b` (default)", "91.50", "BSD-2-Clause"), ("`cifar10_resnet20`", "`a`", "90.00", "MIT")]
    assert rows[2]["weights"] == "not yet: needs the project's own runs" and rows[2]["paper top-1"].startswith("92.49")
    assert [r["model"] for r in rows[2:]] == [f"`cifar10_resnet{d}`" for d in (32, 44, 56, 110, 1202)]
    assert "`fastcifar/weights/LICENSE.b`" in text and "LICENSE.a" not in text


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
    manifest["weights"]["cifar10_resnet20"]["fastcifar"]["sha256"] = hub.sha256(path)
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
