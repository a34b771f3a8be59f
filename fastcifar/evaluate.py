"""Test accuracy of a CIFAR ResNet: shipped weights, a weight file or a training run.

    python -m fastcifar.evaluate --model cifar10_resnet56 --pretrained --data.root DIR
    python -m fastcifar.evaluate --checkpoint runs/resnet56 --data.root DIR

A training checkpoint (or run directory) is scored as it was trained: its model, data set (and so
its number of classes) and normalisation come from the run's saved config. A plain weight file
has none: --model names it, and it is scored on CIFAR-10 with the default normalisation.

Prints top-1 and top-5 over the test set (or its first --limit images). fp32, no compile: the
same figure on any machine, up to floating-point summation order.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastcifar.distributed import DEVICE_CHOICES, resolve_device
from fastcifar.errors import FastcifarError, stderr_line
from fastcifar.files import json_text
from fastcifar.scoring import evaluate_model, run_scoring


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
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pretrained", action="store_true", help="the shipped weights (sha256-checked)")
    src.add_argument("--checkpoint", type=Path, help="a training checkpoint, a run directory or a weight file")
    p.add_argument("--data.root", dest="data_root", required=True,
                   help="where the data set is (npz, official layout or archive)")
    p.add_argument("--data.download", dest="download", action="store_true", help="download the data set if missing")
    p.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR, help="where shipped weights and manifest.json are")
    p.add_argument("--limit", type=int, default=None, help="only the first N test images")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    from fastcifar import hub
    from fastcifar.data import SPECS, num_classes
    from fastcifar.models import build_model

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.pretrained and not args.model:
        parser.error("--pretrained needs --model")
    try:
        if args.limit is not None and args.limit <= 0:
            raise FastcifarError(f"--limit: {args.limit} is invalid: expected an integer > 0")
        if args.batch_size <= 0:
            raise FastcifarError(f"--batch-size: {args.batch_size} is invalid: expected an integer > 0")
        device = resolve_device(args.device, key="--device")
        if args.pretrained:
            name = model_for(args.model, checkpoint=False)
            state, path = hub.load_weights(args.model, args.weights_dir)
            run = run_scoring({"model": {"name": name}}, path)
        else:
            name = model_for(args.model, checkpoint=True) if args.model else None
            state, path, tree = hub.read_checkpoint(args.checkpoint)
            if tree is None and name is None:
                raise FastcifarError(f"--model: {path} holds no run config, so name its model "
                                     "(e.g. --model cifar10_resnet56)")
            run = run_scoring(tree, path)
            name = name or run.model
        model = build_model(name, num_classes(run.dataset), run.shortcut)
        hub.load_into(model, state, path)
        source = path.name if args.pretrained else str(path)  # shipped files by their manifest name
        result = evaluate_model(model, args.data_root, args.limit, device, args.batch_size, args.download,
                                run.dataset, run.mean, run.std)
    except FastcifarError as e:
        stderr_line(f"evaluate: error: {str(e).strip().splitlines()[0]}")
        return 2
    label = args.model or name
    result = {"model": label, "dataset": run.dataset, "weights": source, **result}
    if args.json:
        print(json_text(result))
    else:
        print(f"{label} ({source}): top-1 {result['top1']:.2f}%, top-5 {result['top5']:.2f}% "
              f"on {result['images']} {SPECS[run.dataset].name} test images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
