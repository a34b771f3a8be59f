"""Test accuracy of a CIFAR ResNet: the shipped weights, a weight file or a training run.

    python -m fastcifar.evaluate                                    # every shipped weight, as a table
    python -m fastcifar.evaluate --weights all --data.root DIR      # the same, data elsewhere
    python -m fastcifar.evaluate --model cifar10_resnet56 --weights akamaster
    python -m fastcifar.evaluate --model cifar10_resnet56 --pretrained     # its default weights
    python -m fastcifar.evaluate --checkpoint runs/resnet56         # a run: data root from its config

The table re-measures each shipped weight with its own normalisation and sets it beside the
manifest's figure (the full test set's, or with --limit 1000 the first 1000 images') and the paper's
error; the exit status is 1 where a measured top-1 differs from the manifest by more than 0.05.

A training checkpoint (or run directory) is scored as it was trained: its model, data set (and so
its number of classes), normalisation and, unless --data.root is given, data root come from the
run's saved config. A plain weight file has none: --model names it, and it is scored on CIFAR-10
with the default normalisation.

fp32, no compile: the same figure on any machine, up to floating-point summation order.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastcifar.distributed import DEVICE_CHOICES, resolve_device
from fastcifar.errors import FastcifarError, stderr_line
from fastcifar.files import json_text
from fastcifar.scoring import evaluate_model, run_scoring

DEFAULT_DATA_ROOT = "data"


def model_for(name: str, checkpoint: bool) -> str:
    """--model as a registry name: a hub name, or with --checkpoint also resnet<6n+2>."""
    from fastcifar import hub
    from fastcifar.models import check_model_name

    if name in hub.HUB_MODELS or not checkpoint:
        return hub.model_name(name)
    try:
        check_model_name(name)
    except FastcifarError:
        raise hub.HubError(f"--model: unknown model {name!r} (a hub name such as cifar10_resnet56, "
                           "or resnet<6n+2> such as resnet8)") from None
    return name


def build_parser() -> argparse.ArgumentParser:
    from fastcifar.hub import HUB_MODELS, WEIGHTS_DIR

    p = argparse.ArgumentParser(prog="python -m fastcifar.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help=f"one of {', '.join(HUB_MODELS)}; with --checkpoint also resnet<6n+2>, "
                                   "and only needed when the checkpoint has no run config")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--weights", default=None, help="shipped weights by name (e.g. akamaster, DEFAULT), "
                     "or 'all' (the default without --checkpoint): every shipped weight, as a table")
    src.add_argument("--pretrained", action="store_true", help="the default shipped weights (--weights DEFAULT)")
    src.add_argument("--checkpoint", type=Path, help="a training checkpoint, a run directory or a weight file")
    p.add_argument("--data.root", dest="data_root", default=None,
                   help=f"where the data set is (npz, official layout or archive); default {DEFAULT_DATA_ROOT}, "
                        "or for --checkpoint the run's data.root")
    p.add_argument("--data.download", dest="download", action="store_true", help="download the data set if missing")
    p.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR, help="where shipped weights and manifest.json are")
    p.add_argument("--limit", type=int, default=None, help="only the first N test images")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def run_data_root(tree: dict | None) -> str:
    """A run's data root, from its saved config (the one it trained on), else the default."""
    data = (tree or {}).get("data")
    root = data.get("root") if isinstance(data, dict) else None
    return str(root) if root else DEFAULT_DATA_ROOT


def evaluate_checkpoint(args, device) -> tuple[dict, str]:
    from fastcifar import hub
    from fastcifar.data import num_classes
    from fastcifar.models import build_model

    name = model_for(args.model, checkpoint=True) if args.model else None
    state, path, tree = hub.read_checkpoint(args.checkpoint)
    if tree is None and name is None:
        raise FastcifarError(f"--model: {path} holds no run config, so name its model (e.g. --model cifar10_resnet56)")
    run = run_scoring(tree, path)
    name = name or run.model
    model = build_model(name, num_classes(run.dataset), run.shortcut)
    hub.load_into(model, state, path)
    result = evaluate_model(model, args.data_root or run_data_root(tree), args.limit, device, args.batch_size,
                            args.download, run.dataset, run.mean, run.std)
    return {"model": args.model or name, "dataset": run.dataset, "weights": str(path), **result}, run.dataset


def evaluate_weight(args, device, hub_name: str, weight: str | None) -> tuple[dict, dict]:
    """(result, manifest entry) of one shipped weight (None: the default), with its own normalisation."""
    from fastcifar import hub

    chosen = hub.resolve_weights(hub_name, weight, True, args.weights_dir)
    model = hub.get_model(hub_name, weights=chosen, weights_dir=args.weights_dir)
    entry = chosen.meta
    result = evaluate_model(model, args.data_root or DEFAULT_DATA_ROOT, args.limit, device, args.batch_size,
                            args.download, entry.get("dataset", "cifar10"), tuple(entry["mean"]), tuple(entry["std"]))
    return {"model": hub_name, "dataset": entry.get("dataset", "cifar10"), "weights": entry["file"],
            "source": entry["name"], **result}, entry


def recorded(entry: dict, limit: int | None, images: int) -> dict | None:
    """The manifest's figure for the images measured: the whole test set's, or the first `limit`'s."""
    figure = entry.get("test" if limit is None else f"test_first_{limit}")
    return figure if figure and figure.get("images") == images else None


def shipped_table(args, device) -> tuple[list[dict], bool]:
    """Every shipped weight (of --model, when given) re-measured beside its manifest figure; a model
    with none ships a row saying so."""
    from fastcifar import hub
    from fastcifar.bench.common import PAPER_TOP1
    from fastcifar.models import check_model_name

    shipped = hub.read_manifest(args.weights_dir)["weights"]
    rows, ok = [], True
    for hub_name in [args.model] if args.model else list(hub.HUB_MODELS):
        paper = PAPER_TOP1.get(check_model_name(hub.model_name(hub_name)))
        base = {"model": hub_name, "paper_error": None if paper is None else round(100 - paper, 2)}
        if not shipped.get(hub_name):
            rows.append({**base, "source": None, "note": hub.NOT_YET.split(" (")[0]})
            continue
        for weight in sorted(shipped[hub_name]):
            result, entry = evaluate_weight(args, device, hub_name, weight)
            figure = recorded(entry, args.limit, result["images"])
            diff = None if figure is None else round(result["top1"] - figure["top1"], 4)
            ok &= diff is None or abs(diff) <= hub.TOLERANCE
            rows.append({**base, **result, "params": entry.get("params"),
                         "manifest_top1": figure and figure["top1"], "difference": diff})
    return rows, ok


def table_text(rows: list[dict]) -> str:
    from fastcifar import hub
    from fastcifar.bench.common import markdown_table

    def pct(v, digits=2):
        return "—" if v is None else f"{v:.{digits}f}"

    lines = [[r["model"], r["source"] or r["note"], "—" if r.get("params") is None else f"{r['params']:,}",
              pct(r.get("top1")), pct(r.get("top5")), pct(r.get("manifest_top1")),
              "—" if r.get("difference") is None else f"{r['difference']:+.2f}"
              + (" (off)" if abs(r["difference"]) > hub.TOLERANCE else ""), pct(r["paper_error"])] for r in rows]
    images = {r["images"] for r in rows if "images" in r}
    return (markdown_table(["model", "source", "parameters", "measured top-1", "measured top-5", "manifest top-1",
                            "difference", "paper error"], lines)
            + f"\n\nCIFAR-10 test images per weight: {', '.join(map(str, sorted(images))) or 'none'}; "
              f"a measured top-1 off the manifest by more than {hub.TOLERANCE} fails.")


def main(argv: list[str] | None = None) -> int:
    from fastcifar.data import SPECS

    args = build_parser().parse_args(argv)
    weight = "DEFAULT" if args.pretrained else args.weights
    try:
        if args.limit is not None and args.limit <= 0:
            raise FastcifarError(f"--limit: {args.limit} is invalid: expected an integer > 0")
        if args.batch_size <= 0:
            raise FastcifarError(f"--batch-size: {args.batch_size} is invalid: expected an integer > 0")
        if args.model and not args.checkpoint:
            model_for(args.model, checkpoint=False)
        if weight not in (None, "all") and not args.model:
            raise FastcifarError(f"--{'pretrained' if args.pretrained else 'weights ' + weight} needs --model "
                                 "(or --weights all for every shipped weight)")
        device = resolve_device(args.device, key="--device")
        if args.checkpoint:
            result, dataset = evaluate_checkpoint(args, device)
        elif weight in (None, "all"):
            rows, ok = shipped_table(args, device)
            print(json_text({"rows": rows, "ok": ok}) if args.json else table_text(rows))
            return 0 if ok else 1
        else:
            result, _entry = evaluate_weight(args, device, args.model, weight)
            dataset = result["dataset"]
    except FastcifarError as e:
        stderr_line(f"evaluate: error: {str(e).strip().splitlines()[0]}")
        return 2
    if args.json:
        print(json_text(result))
    else:
        shown = result["weights"] if args.checkpoint else f"{result['source']}, {result['weights']}"
        print(f"{result['model']} ({shown}): top-1 {result['top1']:.2f}%, top-5 {result['top5']:.2f}% "
              f"on {result['images']} {SPECS[dataset].name} test images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
