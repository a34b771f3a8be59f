"""run.py itself: with no argument it prints its usage and exits 2 (bad input), as its usage says."""

import runpy
import sys

import pytest
from conftest import REPO


def test_run_py_without_arguments_prints_usage_and_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["run.py"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(REPO / "run.py"), run_name="__main__")
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert out.startswith("usage: run.py CONFIG [--section.key=value ...] [--resume[=auto]]\n")
    assert "optim.lr" in out and "Traceback" not in err
