"""Ship third-party CIFAR ResNet weights (akamaster/pytorch_resnet_cifar10's ResNet-20/32/44/56) as the hub's:
each file's sha256 checked, its keys mapped onto the project's models by an explicit key map, every tensor
checked by shape, then measured on the CIFAR-10 test set (CPU, fp32, the weights' own normalisation) for
the manifest:   python benchmarks/convert_weights.py --from ../shared/weights/akamaster --data-root DIR
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from fastcifar import hub
from fastcifar.bench import common
from fastcifar.errors import FastcifarError
from fastcifar.files import write_text_atomic
from fastcifar.models import blocks_per_stage, build_model, check_model_name
from fastcifar.scoring import evaluate_model

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def akamaster_key_map(depth: int) -> dict[str, str]:
    """akamaster's key -> the project's, for option-A ResNet-<depth>: DataParallel's 'module.'
    prefix, 'linear' for 'fc', the same names otherwise. Written out per tensor, so a key that is
    renamed on either side is an error here, not a silently skipped tensor."""
    bn = ("weight", "bias", "running_mean", "running_var")
    names = ["conv1.weight", *(f"bn1.{t}" for t in bn)]
    for stage in (1, 2, 3):
        for block in range(blocks_per_stage(depth)):
            for layer in ("1", "2"):
                prefix = f"layer{stage}.{block}."
                names += [f"{prefix}conv{layer}.weight", *(f"{prefix}bn{layer}.{t}" for t in bn)]
    mapped = {f"module.{name}": name for name in names}
    mapped.update({"module.linear.weight": "fc.weight", "module.linear.bias": "fc.bias"})
    return mapped


@dataclass(frozen=True)
class Source:
    repository: str
    commit: str
    license: str
    license_file: str  # in the source folder; shipped as weights/LICENSE.<source name>
    files: dict  # registry model name -> (file name, sha256)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    recipe: str
    key_map: object  # depth -> {source key: project key}
    state_key: str  # where the state dict is inside the saved object
    filled: tuple = ("num_batches_tracked",)  # buffers the source lacks (saved before torch 0.4.1): zero


SOURCES = {
    "akamaster": Source(
        repository="akamaster/pytorch_resnet_cifar10", commit="d5489e8995e81e91ce6b1d69dcc98ad579b0b153",
        license="BSD-2-Clause (Copyright (c) 2018, Yerlan Idelbayev)", license_file="LICENSE",
        files={
            "resnet20": ("resnet20-12fca82f.th", "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8"),
            "resnet32": ("resnet32-d509ac18.th", "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850"),
            "resnet44": ("resnet44-014dd654.th", "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4"),
            "resnet56": ("resnet56-4bfd9763.th", "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367"),
        },
        mean=IMAGENET_MEAN, std=IMAGENET_STD,
        recipe="SGD lr 0.1, momentum 0.9, weight decay 1e-4, batch 128, 200 epochs, x0.1 at epochs 100 and 150; "
               "crop (pad 4) + flip; all 50,000 training images; final-epoch weights",
        key_map=akamaster_key_map, state_key="state_dict"),
}


def convert(path: str | Path, source: str, model: str) -> dict:
    """The project's state dict for `model` from a `source` file: refuses a wrong sha256, a missing or
    extra key and a wrong shape, each with one line naming it."""
    src, path = SOURCES[source], Path(path)
    expected = src.files[model][1]
    if not path.is_file():
        raise hub.HubError(f"{path}: not found ({source}'s {model} weights)")
    found = hub.sha256(path)
    if found != expected:
        raise hub.HubError(f"{path}: sha256 {found}, but {source}'s {model} file has {expected}")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    state = saved.get(src.state_key) if isinstance(saved, dict) else None
    if not isinstance(state, dict):
        raise hub.HubError(f"{path}: no {src.state_key!r} state dict inside")
    key_map = src.key_map(check_model_name(model))
    missing = [k for k in key_map if k not in state]
    extra = [k for k in state if k not in key_map]
    if missing or extra:
        what = f"key {missing[0]} is missing" if missing else f"unexpected key {extra[0]}"
        raise hub.HubError(f"{path}: {what} (the {source} key map for {model})")
    target = build_model(model).state_dict()
    out = {}
    for theirs, ours in key_map.items():
        if tuple(state[theirs].shape) != tuple(target[ours].shape):
            raise hub.HubError(f"{path}: {theirs} has shape {list(state[theirs].shape)}, but {model}'s {ours} "
                               f"needs {list(target[ours].shape)}")
        out[ours] = state[theirs].float().contiguous()
    for key, value in target.items():
        if key not in out:
            if not key.endswith(src.filled):  # the key map must name every other tensor
                raise hub.HubError(f"{source} key map for {model} gives no tensor for {key}")
            out[key] = torch.zeros_like(value)
    return {k: out[k] for k in target}  # the model's own key order


def main(argv: list[str] | None = None) -> int:
    p = common.parser("convert_weights.py", __doc__)
    p.add_argument("--from", dest="source_dir", type=Path, required=True, help="folder of the source's files")
    p.add_argument("--source", choices=sorted(SOURCES), default="akamaster")
    p.add_argument("--models", nargs="+", default=None, help="default: every model the source has")
    p.add_argument("--data-root", required=True, help="CIFAR-10, for the accuracy recorded in the manifest")
    p.add_argument("--weights-dir", type=Path, default=hub.WEIGHTS_DIR)
    argv_used = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv_used)
    src = SOURCES[args.source]
    unknown = [m for m in args.models or [] if m not in src.files]
    if unknown:
        p.error(f"--models: {args.source} has no {unknown[0]} (it has {', '.join(src.files)})")
    notice = args.source_dir / src.license_file
    try:  # every file checked before the first (slow) measurement
        if not notice.is_file():
            raise hub.HubError(f"{notice}: not found (the licence that must ship with {args.source}'s weights)")
        converted = {m: convert(args.source_dir / src.files[m][0], args.source, m) for m in args.models or src.files}
        write_text_atomic(args.weights_dir / f"LICENSE.{args.source}", notice.read_text())  # ships beside them
        for model, state in converted.items():
            net = build_model(model)
            hub.load_into(net, state, src.files[model][0])  # strict, as a user loads it
            test = evaluate_model(net, args.data_root, mean=src.mean, std=src.std)
            subset = evaluate_model(net, args.data_root, limit=hub.SUBSET, mean=src.mean, std=src.std)
            entry = hub.add_weight(args.weights_dir, f"cifar10_{model}", args.source, hub.plain_state(net), {
                "model": model, "dataset": "cifar10", "source": args.source,
                "source_repository": src.repository, "source_commit": src.commit,
                "source_file": src.files[model][0], "source_sha256": src.files[model][1],
                "license": src.license, "license_file": f"LICENSE.{args.source}",
                "params": sum(t.numel() for t in net.parameters()), "mean": list(src.mean), "std": list(src.std),
                "recipe": src.recipe, "test": test, f"test_first_{hub.SUBSET}": subset,
                "measured": hub.measurement(args.data_root, ["convert_weights.py", *argv_used])})
            print(f"cifar10_{model} {args.source} -> {entry['file']}: top-1 {test['top1']:.2f}%, "
                  f"top-5 {test['top5']:.2f}% on {test['images']} test images")
    except FastcifarError as e:
        p.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
