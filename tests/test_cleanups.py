"""Cleanups: a run that starts (fresh or resumed) removes the previous process's summary.json,
and a failed atomic write leaves neither a temporary file nor a damaged old file. (A dropped
download's .part file: tests/test_data_errors.py; a failed checkpoint save: test_training.py.)"""

import json
import os

import pytest
from conftest import tiny_config

from fastcifar.files import write_text_atomic
from fastcifar.training import Trainer

STALE = {"status": "finished", "finished": True, "final_top1": 99.9}


def test_a_starting_run_removes_a_stale_summary(synthetic_root, tmp_path):
    """summary.json says how the last process ended: while a new one runs it must be absent,
    or the old run's result reads as this one's."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps(STALE))
    trainer = Trainer(tiny_config(synthetic_root, run_dir))
    assert not (run_dir / "summary.json").exists(), "a fresh run kept the previous summary.json"

    trainer.save_checkpoint()  # epoch 0: something to resume from
    (run_dir / "summary.json").write_text(json.dumps(STALE))
    Trainer(tiny_config(synthetic_root, run_dir, train__resume=True))
    assert not (run_dir / "summary.json").exists(), "a resumed run kept the previous summary.json"


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = write_text_atomic(tmp_path / "summary.json", "old\n")

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError):
        write_text_atomic(path, "new\n")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"], "a temporary file was left behind"
