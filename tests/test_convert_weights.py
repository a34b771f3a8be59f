"""benchmarks/convert_weights.py: akamaster's published weights -> shipped weights, every key and shape
checked, refusals in one line."""

import dataclasses
import json
import shutil

import pytest
import torch
from conftest import REPO, SHARED_DATA

from fastcifar import hub
from fastcifar.bench import convert_weights as cw
from fastcifar.models import build_model

AKAMASTER = SHARED_DATA.parent / "weights" / "akamaster"
RESNET20 = AKAMASTER / "resnet20-12fca82f.th"


@pytest.fixture
def source():
    if not RESNET20.is_file():
        pytest.skip(f"akamaster's weights not present ({RESNET20} not found)")
    return torch.load(RESNET20, map_location="cpu", weights_only=True)["state_dict"]


def renamed_by_hand(source: dict) -> dict:
    """akamaster's keys renamed without the converter: DataParallel's prefix off, 'linear' is 'fc'."""
    return {k.removeprefix("module.").replace("linear.", "fc."): v for k, v in source.items()}


def as_akamaster(tmp_path, state, monkeypatch, name="resnet20-x.th"):
    """`state` saved as akamaster saves, and registered as the source's resnet20 file (its own sha256),
    so the checks after the sha256 one are reached."""
    path = tmp_path / name
    torch.save({"state_dict": state, "best_prec1": 91.0}, path)
    src = cw.SOURCES["akamaster"]
    files = {**src.files, "resnet20": (path.name, hub.sha256(path))}
    monkeypatch.setitem(cw.SOURCES, "akamaster", dataclasses.replace(src, files=files))
    return path


def test_the_published_file_converts_tensor_for_tensor(source):
    state = cw.convert(RESNET20, "akamaster", "resnet20")
    model = build_model("resnet20")
    model.load_state_dict(state, strict=True)
    expected = renamed_by_hand(source)  # nothing else renamed
    assert set(state) == set(expected) | {k for k in state if k.endswith("num_batches_tracked")}
    assert all(torch.equal(state[k], v.float()) for k, v in expected.items())
    assert all(int(v) == 0 for k, v in state.items() if k.endswith("num_batches_tracked"))
    assert len(source) == 1 + 4 + 9 * (2 + 2 * 4) + 2  # conv1, bn1, 9 blocks (2 convs, 2 BNs), linear: all mapped


def test_a_wrong_sha256_is_refused_in_one_line(tmp_path, source):
    copy = tmp_path / RESNET20.name
    shutil.copyfile(RESNET20, copy)
    with open(copy, "ab") as f:
        f.write(b"\0")
    with pytest.raises(hub.HubError) as info:
        cw.convert(copy, "akamaster", "resnet20")
    assert str(info.value) == (f"{copy}: sha256 {hub.sha256(copy)}, but akamaster's resnet20 file has "
                               "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8")


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("module.layer2.1.bn1.running_var"),
     "key module.layer2.1.bn1.running_var is missing (the akamaster key map for resnet20)"),
    (lambda s: s.update({"module.layer2.0.shortcut.0.weight": torch.zeros(32, 16, 1, 1)}),
     "unexpected key module.layer2.0.shortcut.0.weight (the akamaster key map for resnet20)"),
    (lambda s: s.update({"module.linear.weight": torch.zeros(100, 64)}),
     "module.linear.weight has shape [100, 64], but resnet20's fc.weight needs [10, 64]"),
])
def test_a_missing_or_extra_key_or_a_wrong_shape_is_refused_in_one_line(change, message, source, tmp_path,
                                                                         monkeypatch):
    change(source)
    path = as_akamaster(tmp_path, source, monkeypatch)
    with pytest.raises(hub.HubError) as info:
        cw.convert(path, "akamaster", "resnet20")
    assert str(info.value) == f"{path}: {message}"


def test_the_command_ships_weights_licence_and_manifest_entry(source, tmp_path, synthetic_root, capsys):
    weights = tmp_path / "weights"
    code = cw.main(["--from", str(AKAMASTER), "--models", "resnet20", "--data-root", str(synthetic_root),
                    "--weights-dir", str(weights)])
    assert code == 0
    assert (weights / "LICENSE.akamaster").read_text() == (AKAMASTER / "LICENSE").read_text()
    entry = json.loads((weights / "manifest.json").read_text())["weights"]["cifar10_resnet20"]["akamaster"]
    assert entry["source_sha256"] == hub.sha256(RESNET20) and entry["params"] == 269_722
    assert entry["mean"] == [0.485, 0.456, 0.406] and entry["std"] == [0.229, 0.224, 0.225]
    assert entry["test"]["images"] == 200 and entry["measured"]["command"].startswith("convert_weights.py")  # synthetic
    model = hub.get_model("cifar10_resnet20", weights="akamaster", weights_dir=weights)
    expected = renamed_by_hand(source)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
    assert "cifar10_resnet20 akamaster -> cifar10_resnet20-akamaster-" in capsys.readouterr().out


def test_the_command_refuses_before_writing(tmp_path, synthetic_root, capsys):
    folder = tmp_path / "from"
    folder.mkdir()
    (folder / "LICENSE").write_text("BSD")
    (folder / "resnet20-12fca82f.th").write_bytes(b"not the file")
    with pytest.raises(SystemExit) as info:
        cw.main(["--from", str(folder), "--models", "resnet20", "--data-root", str(synthetic_root),
                 "--weights-dir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # argparse's usage, then the one line
    assert info.value.code == 2 and last.startswith("convert_weights.py: error: ") and "sha256" in last
    assert not (tmp_path / "w").exists()
    with pytest.raises(SystemExit):
        cw.main(["--from", str(folder), "--models", "resnet110", "--data-root", str(synthetic_root)])
    assert "--models: akamaster has no resnet110" in capsys.readouterr().err


def test_the_scripts_stay_thin():
    assert "from fastcifar.bench.convert_weights import main" in (REPO / "benchmarks" / "convert_weights.py").read_text()
