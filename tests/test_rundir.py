import json

from fastcifar import rundir


def test_curve_has_each_evaluated_epoch_once(tmp_path):
    """An epoch trained twice around a resume counts as its last record; epochs without a test
    accuracy (train.eval_every), step records, events and a line cut by a kill are left out."""
    lines = [{"epoch": 1, "train_loss": 2.0, "top1": 30.0, "top5": 80.0}, {"step": 9, "epoch": 1.5, "loss": 1.8},
             {"epoch": 2, "train_loss": 1.5}, {"epoch": 3, "train_loss": 1.2, "top1": 40.0, "top5": 85.0},
             {"event": "resume", "epoch": 2}, {"epoch": 3, "train_loss": 1.1, "top1": 41.0, "top5": 86.0}]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (tmp_path / "metrics.jsonl").write_text(text + '{"epoch": 4, "train_lo')
    assert rundir.curve(tmp_path) == [{"epoch": 1, "top1": 30.0, "top5": 80.0, "train_loss": 2.0},
                                      {"epoch": 3, "top1": 41.0, "top5": 86.0, "train_loss": 1.1}]
    assert rundir.curve(tmp_path / "absent") == []
