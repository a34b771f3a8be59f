"""Reading what the trainer writes into a run directory (summary.json, metrics.jsonl), for the tools
that collect, compare and draw runs."""

from __future__ import annotations

import json
from pathlib import Path


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_finished(run_dir: Path) -> bool:
    return bool((read_json(Path(run_dir) / "summary.json") or {}).get("finished"))


def records(run_dir: Path) -> list[dict]:
    """metrics.jsonl's records; a line cut by a kill is skipped (its epoch is redone after the resume)."""
    path, out = Path(run_dir) / "metrics.jsonl", []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def epochs(records_: list[dict]) -> list[dict]:
    """One record per epoch, in order; an epoch trained twice around a resume counts as its last record."""
    by_epoch = {r["epoch"]: r for r in records_ if "event" not in r and "train_loss" in r}
    return [by_epoch[e] for e in sorted(by_epoch)]


def curve(run_dir: Path) -> list[dict]:
    """The evaluated epochs of a run, in order: epoch, test top-1 and top-5, train loss."""
    return [{k: r.get(k) for k in ("epoch", "top1", "top5", "train_loss")} for r in epochs(records(run_dir))
            if r.get("top1") is not None]
