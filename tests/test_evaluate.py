"""The evaluate command: one-line errors, the one device resolution, and no import cycles among
the package's modules."""

import ast

import pytest
import torch
from conftest import REPO

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


def module_imports() -> dict[str, set[str]]:
    """Each module of fastcifar/ and pipelines/ -> the modules of those it imports, at any depth
    of its code (imports inside functions close a cycle just as well, only later)."""
    files = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
             for top in ("fastcifar", "pipelines") for p in (REPO / top).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                deps |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                         for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def test_no_import_cycles():
    graph = module_imports()
    assert "fastcifar.scoring" in graph["fastcifar.hub"] and "fastcifar.hub" in graph["fastcifar.evaluate"]
    for start in graph:
        seen, todo = set(), [start]
        while todo:
            for dep in graph[todo.pop()]:
                assert dep != start, f"{start} imports itself back through {dep}"
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
