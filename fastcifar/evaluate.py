"""Test accuracy of a CIFAR-10 ResNet: shipped weights, a weight file or a training checkpoint.

    python -m fastcifar.evaluate --model cifar10_resnet56 --pretrained --data.root DIR
    python -m fastcifar.evaluate --model cifar10_resnet56 --checkpoint runs/resnet56 --data.root DIR

Prints top-1 and top-5 over the test set (or its first --limit images). fp32, no compile: the
same figure on any machine, up to floating-point summation order.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fastcifar.distributed import DEVICE_CHOICES, resolve_device
from fastcifar.errors import FastcifarError, stderr_line
from fastcifar.scoring import evaluate_model


def build_parser() -> argparse.ArgumentParser:
    from fastcifar.hub import HUB_MODELS, WEIGHTS_DIR

    p = argparse.ArgumentParser(prog="python -m fastcifar.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help=f"one of {', '.join(HUB_MODELS)}")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pretrained", action="store_true", help="the shipped weights (sha256-checked)")
    src.add_argument("--checkpoint", type=Path, help="a training checkpoint, a run directory or a weight file")
    p.add_argument("--data.root", dest="data_root", required=True, help="where CIFAR-10 is (npz, official layout or archive)")
    p.add_argument("--data.download", dest="download", action="store_true", help="download CIFAR-10 if missing")
    p.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR, help="where shipped weights and manifest.json are")
    p.add_argument("--limit", type=int, default=None, help="only the first N test images")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    from fastcifar import hub

    args = build_parser().parse_args(argv)
    try:
        if args.limit is not None and args.limit <= 0:
            raise FastcifarError(f"--limit: {args.limit} is invalid: expected an integer > 0")
        if args.batch_size <= 0:
            raise FastcifarError(f"--batch-size: {args.batch_size} is invalid: expected an integer > 0")
        device = resolve_device(args.device, key="--device").type
        model = hub.get_model(args.model)
        if args.pretrained:
            state, path = hub.load_weights(args.model, args.weights_dir)
        else:
            state, path = hub.checkpoint_state(args.checkpoint)
        hub.load_into(model, state, path)
        source = path.name if args.pretrained else str(path)  # shipped files by their manifest name
        result = evaluate_model(model, args.data_root, args.limit, device, args.batch_size, args.download)
    except FastcifarError as e:
        stderr_line(f"evaluate: error: {str(e).strip().splitlines()[0]}")
        return 2
    result = {"model": args.model, "weights": source, **result}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.model} ({source}): top-1 {result['top1']:.2f}%, top-5 {result['top5']:.2f}% "
              f"on {result['images']} CIFAR-10 test images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
