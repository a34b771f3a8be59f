"""DALI CPU mode, loader alone: the previous design (one DALI sample per image, PREVIOUS's
pipelines/dali.py) beside the current one in one process, interleaved repeats of one epoch each.

    python benchmarks/dali_cpu_redesign.py --batch-size 1024 --images 16384 --repeats 9 --out r.json
"""
import argparse
import dataclasses
import importlib.util
import os
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import common
from fastcifar import config as config_lib
from fastcifar.environment import environment
from fastcifar.synthetic import synthetic_split
from pipelines import LOADERS, base

PREVIOUS = "54a89a7"  # the last commit with one DALI sample per image and per-sample arguments


def previous_loader():
    source = subprocess.run(["git", "show", f"{PREVIOUS}:pipelines/dali.py"], cwd=common.REPO,
                            capture_output=True, text=True, check=True).stdout
    current = LOADERS["dali"]
    with tempfile.NamedTemporaryFile("w", suffix=".py") as f:
        f.write(source)
        f.flush()
        spec = importlib.util.spec_from_file_location("dali_previous", f.name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    LOADERS["dali"] = current  # importing the old module registered it under the same name
    return module.DaliLoader


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    for flag, default in (("--batch-size", 1024), ("--images", 16384), ("--repeats", 7), ("--workers", 2)):
        p.add_argument(flag, type=int, default=default)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)  # torch's spinning OpenMP threads starve DALI's on a small CPU
    cfg = config_lib.load(common.BASE_CONFIG, common.overrides(loader__workers=args.workers, loader__device="cpu"))
    spec = base.LoaderSpec(synthetic_split(args.images), True, args.batch_size, cfg.augment, cfg.loader,
                           torch.device("cpu"), True, torch.float32, 0)
    loaders = {"previous": previous_loader()(spec), "current": LOADERS["dali"](spec)}
    seconds = {name: [] for name in loaders}
    for repeat in range(args.repeats + 1):  # the first, untimed, warms up
        for name, loader in loaders.items():
            loader.set_epoch(repeat)
            start = time.perf_counter()
            steps = sum(1 for _ in loader)
            if repeat:
                seconds[name].append(time.perf_counter() - start)
    rates = {name: common.summarize([steps * args.batch_size / s for s in values]) for name, values in seconds.items()}
    common.write_json(args.out, {
        "kind": "dali_cpu_redesign", "environment": environment(), "previous_commit": PREVIOUS,
        "settings": {**vars(args), "out": str(args.out), "steps_per_epoch": steps, **dataclasses.asdict(cfg.loader)},
        "load_average_1_5_15_min": os.getloadavg(), "images_per_s": rates,
        "speedup_of_medians": rates["current"]["median"] / rates["previous"]["median"]})
    print({name: round(r["median"]) for name, r in rates.items()},
          round(rates["current"]["median"] / rates["previous"]["median"], 2))


if __name__ == "__main__":
    main()
