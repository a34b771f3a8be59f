"""The evaluate command: one-line errors and the one device resolution."""

import pytest
import torch

from fastcifar import evaluate as evaluate_cli
from fastcifar.distributed import resolve_device
from fastcifar.errors import ConfigError


def evaluate(capsys, *args) -> tuple[int, str, str]:
    code = evaluate_cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_one_device_resolution(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"^--device: 'cuda' needs CUDA, which is not available here"):
        resolve_device("cuda", key="--device")
    with pytest.raises(ConfigError, match=r"^train.device: 'gpu' is not one of auto, cuda, cpu$"):
        resolve_device("gpu")
    code, _out, err = evaluate(capsys, "--model", "cifar10_resnet20", "--checkpoint", tmp_path / "x.pt",
                               "--data.root", tmp_path, "--device", "cuda")
    assert code == 2 and err.startswith("evaluate: error: --device: 'cuda' needs CUDA") and err.count("\n") == 1
