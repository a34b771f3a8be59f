#!/usr/bin/env python
"""DALI CPU mode, loader alone: the previous design (one DALI sample per image; PREVIOUS's
pipelines/dali.py) beside the current one, in one process, interleaved repeats of one epoch each.
    python benchmarks/dali_cpu_redesign.py --batch-size 1024 --images 16384 --repeats 7 --out r.json"""
import argparse, dataclasses, importlib.util, json, os, subprocess, sys, tempfile, time  # noqa: E401
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402
from benchmarks import common  # noqa: E402
from pipelines import LOADERS, base  # noqa: E402

PREVIOUS = "54a89a7"  # the last commit with one DALI sample per image and per-sample arguments
p = argparse.ArgumentParser()
for flag, default in (("--batch-size", 1024), ("--images", 16384), ("--repeats", 7), ("--workers", 2)):
    p.add_argument(flag, type=int, default=default)
args = p.add_argument("--out", type=Path, required=True) and p.parse_args()
torch.set_num_threads(1)  # torch's spinning OpenMP threads starve DALI's on a small CPU
current, source = LOADERS["dali"], subprocess.run(["git", "show", f"{PREVIOUS}:pipelines/dali.py"],
                                                  cwd=common.REPO, capture_output=True, text=True, check=True)
with tempfile.NamedTemporaryFile("w", suffix=".py") as f:  # importing it registers 'dali': restored below
    f.write(source.stdout), f.flush()
    spec_ = importlib.util.spec_from_file_location("dali_previous", f.name)
    spec_.loader.exec_module(previous := importlib.util.module_from_spec(spec_))
LOADERS["dali"] = current
cfg = common.load_config(common.BASE_CONFIG, common.overrides(loader__workers=args.workers, loader__device="cpu"))
spec = base.LoaderSpec(common.synthetic_split(args.images), True, args.batch_size, cfg.augment, cfg.loader,
                       torch.device("cpu"), True, torch.float32, 0)
loaders, seconds = {"previous": previous.DaliLoader(spec), "current": current(spec)}, {"previous": [], "current": []}
for repeat in range(args.repeats + 1):  # the first, untimed, warms up
    for name, loader in loaders.items():
        loader.set_epoch(repeat)
        start, steps = time.perf_counter(), sum(1 for _ in loader)
        seconds[name].append(time.perf_counter() - start) if repeat else None
rates = {n: common.rate(s, steps * args.batch_size) for n, s in seconds.items()}
result = {"kind": "dali_cpu_redesign", "environment": common.environment(), "previous_commit": PREVIOUS,
          "settings": {**vars(args), "out": str(args.out), "steps_per_epoch": steps, **dataclasses.asdict(cfg.loader)},
          "load_average_1_5_15_min": os.getloadavg(), "images_per_s": rates,
          "speedup_of_medians": rates["current"]["median"] / rates["previous"]["median"]}
args.out.write_text(json.dumps(result, indent=1) + "\n")
print({n: round(r["median"]) for n, r in rates.items()}, round(result["speedup_of_medians"], 2))
