"""train.tensorboard: the run's scalars as TensorBoard event files in run_dir/tensorboard (rank 0).

metrics.jsonl stays the source of truth; this mirrors its records. A step record (every
train.log_every steps) gives train/loss, train/lr, train/images_per_s; an epoch record gives
epoch/train_loss, epoch/images_per_s, epoch/lr and, when it was evaluated, test/top1, test/top5,
test/loss; all at the global optimizer step, with epoch/epoch to read epochs off the same axis.
"""

from __future__ import annotations

from pathlib import Path

from fastcifar.errors import ConfigError

STEP_TAGS = {"loss": "train/loss", "lr": "train/lr", "images_per_s": "train/images_per_s"}
EPOCH_TAGS = {"train_loss": "epoch/train_loss", "images_per_s": "epoch/images_per_s", "lr": "epoch/lr",
              "epoch": "epoch/epoch", "top1": "test/top1", "top5": "test/top5", "test_loss": "test/loss"}


class TensorBoardLog:
    def __init__(self, run_dir: Path, enabled: bool):
        self.folder, self.enabled, self.writer = Path(run_dir) / "tensorboard", enabled, None
        if enabled:
            try:  # checked before training starts, not at the first record
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            except ImportError:
                raise ConfigError("train.tensorboard: true needs the tensorboard package: pip install tensorboard "
                                  "(or the project's [tensorboard] extra), or --train.tensorboard=false") from None

    def write(self, record: dict) -> None:
        """One metrics.jsonl record; events (resume, stopped, ...) carry no scalars and are skipped."""
        if not self.enabled or "step" not in record or "event" in record:
            return
        tags = EPOCH_TAGS if "train_loss" in record else STEP_TAGS
        if self.writer is None:  # opened at the first scalar: a refused run leaves no folder
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.folder))
        for key, tag in tags.items():
            if record.get(key) is not None:
                self.writer.add_scalar(tag, record[key], record["step"])
        if tags is EPOCH_TAGS:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
