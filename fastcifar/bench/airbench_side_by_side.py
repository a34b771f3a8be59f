"""airbench94 (the speed peer: Keller Jordan's airbench, the sdist vendored in benchmarks/third_party/) and
the project's time-to-92% run, side by side on one GPU in one command, both figures in one result file.

Our side is `time_to_accuracy.py --depths D --seeds S --target T` in a subprocess, with the
--section.key=value overrides given here (those of the fastest time-to-92% recipe); its result is
embedded whole. Then airbench, in this process, on the same CIFAR-10 (--data-root's npz, written as
the train.pt/test.pt that airbench's CifarLoader reads, since it would otherwise download): one untimed
warmup94() (its verbose mode trains one step), then --runs timed runs of airbench94. A run's seconds:
wall clock from a synchronize before train94(verbose=False) to the end of the test-time-augmented
evaluation at airbench94's own tta_level, the scope of its published time (whitening init, training,
TTA); its train loader is built before the clock starts, as airbench's own timing excludes the load
(recorded apart). Accuracy is recorded with TTA and without (untimed).

On the GPU machine (no network: airbench comes from the vendored sdist, DALI from --dali-path):

    python benchmarks/airbench_side_by_side.py --device cuda --data-root /root/data --dali-path /root/site \\
        --out "$OUT/airbench_side_by_side.json" [--train.batch_size=... the fast recipe's overrides]

`--device cpu` is the dry run: everything but airbench's training (it needs CUDA): the .pt files written
and read back through airbench's own CifarLoader, our side tiny (one epoch cut at 2 steps).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from email.parser import HeaderParser
from pathlib import Path

from fastcifar.bench import common
from fastcifar.environment import REPO
from fastcifar.errors import FastcifarError, stderr_line

SCHEMA_VERSION = 1
PROG = "airbench_side_by_side.py"
SDIST = REPO / "benchmarks" / "third_party" / "airbench-0.1.8.tar.gz"
SDIST_SHA256 = "f85885d8afe9018b8da132a4224ad7b47d75c9f99fd985d0a687567a25cf4a33"  # benchmarks/third_party/README.md
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding this fastcifar: a clone, or site-packages
DATA_FOLDER = "cifar10"  # airbench's train94 and its test loader open the relative path 'cifar10'
PT_KEYS = ("images", "labels", "classes")  # what CifarLoader reads from train.pt / test.pt
# our side in the dry run: seconds, not minutes; the user's overrides come after and win
DRY_RUN = ["--train.epochs=1", "--train.max_steps=2", "--train.batch_size=32", "--loader.name=torchvision",
           "--loader.workers=0", "--loader.eval_batch_size=500"]
TIMING = ("seconds: wall clock from torch.cuda.synchronize() before train94(train_loader, verbose=False) to the "
          "end of evaluate(model, test_loader, tta_level=hyp['net']['tta_level']) (its .item() synchronizes): "
          "airbench's published scope (whitening init, training, TTA); the train loader (torch.load of train.pt "
          "onto the GPU) is built before the clock, load_seconds; train94 still loads its own test loader inside")


def parse_args(argv):
    p = common.parser(PROG, __doc__)
    p.add_argument("--data-root", type=Path, required=True, help="holds cifar10/{train,test}.npz")
    p.add_argument("--airbench", type=Path, default=SDIST, help="airbench 0.1.8's sdist (its sha256 is checked)")
    p.add_argument("--runs", type=common.positive_int, default=5, help="timed airbench94 runs after the warm-up")
    p.add_argument("--depth", type=common.depth, default=56, help="our side's model (time_to_accuracy --depths)")
    p.add_argument("--seeds", type=common.positive_int, default=3, help="our side's seeds")
    p.add_argument("--target", type=common.percentage, default=92.0, help="our side's test top-1, percent")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: the dry run (airbench not trained)")
    p.add_argument("--dali-path", type=Path, nargs="*", default=[],
                   help="folders put before PYTHONPATH for our side, where DALI is installed")
    p.add_argument("--run-root", type=Path, help="our side's run directories (default: time_to_accuracy.py's)")
    p.add_argument("--work-dir", type=Path, help="airbench's data and code (default: a temporary folder, removed)")
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR / "airbench_side_by_side.json")
    args = common.parse_with_overrides(p, argv)
    missing = [str(d) for d in args.dali_path if not d.is_dir()]
    if missing:
        p.error(f"--dali-path: {missing[0]} is not a folder")
    return args


# ---- airbench: the vendored sdist, its data -----------------------------------------------------------
def check_sdist(path: Path) -> str:
    """The sdist's sha256, when it is the one vendored; else a one-line error."""
    from fastcifar.files import file_digest

    if not path.is_file():
        raise FastcifarError(f"--airbench: {path} not found (airbench 0.1.8's sdist, see benchmarks/third_party/)")
    digest = file_digest(path, "sha256")
    if digest != SDIST_SHA256:
        raise FastcifarError(f"--airbench: {path} has sha256 {digest}, expected {SDIST_SHA256} (airbench 0.1.8's sdist)")
    return digest


def extract(sdist: Path, dest: Path) -> Path:
    """The package folder and PKG-INFO only, member by member: nothing lands outside `dest`."""
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar.getmembers():
            match = re.fullmatch(r"airbench-[\w.]+/(PKG-INFO|airbench/\w+\.py)", member.name)
            if match and member.isfile():
                target = dest / match.group(1)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
    if not (dest / "airbench" / "__init__.py").is_file():
        raise FastcifarError(f"--airbench: {sdist} holds no airbench package")
    return dest


def import_airbench(folder: Path):
    """The extracted package as `airbench`, loaded from its file: it wins over any installed airbench."""
    package = folder / "airbench"
    spec = importlib.util.spec_from_file_location("airbench", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    for name in [k for k in sys.modules if k == "airbench" or k.startswith("airbench.")]:
        del sys.modules[name]  # an airbench imported before would lend its submodules
    sys.modules["airbench"] = module  # its relative imports resolve through this entry
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def cwd(path: Path):
    """contextlib.chdir, which Python 3.10 lacks."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def sdist_version(folder: Path) -> str:
    return HeaderParser().parsestr((folder / "PKG-INFO").read_text())["Version"]


def write_pt(data_root: Path, work: Path) -> dict:
    """<work>/cifar10/{train,test}.pt from our npz, in CifarLoader's layout; the image counts."""
    import torch

    from fastcifar.data import load_cifar
    from fastcifar.hub import CIFAR10_CLASSES

    folder = work / DATA_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in ("train", "test"):
        data = load_cifar("cifar10", data_root, split)
        tmp = folder / f"{split}.pt.tmp"
        torch.save({"images": torch.from_numpy(data.images), "labels": torch.from_numpy(data.labels),
                    "classes": list(CIFAR10_CLASSES)}, tmp)
        tmp.replace(folder / f"{split}.pt")
        counts[split] = len(data)
    return counts


def check_pt(work: Path) -> dict:
    """The .pt files read back as CifarLoader reads them: the keys, dtypes and NHWC shape it expects."""
    import torch

    found = {}
    for split in ("train", "test"):
        path = work / DATA_FOLDER / f"{split}.pt"
        data = torch.load(path, map_location="cpu")
        missing = [k for k in PT_KEYS if k not in data]
        if missing:
            raise FastcifarError(f"{path}: no {missing[0]!r} (CifarLoader reads {', '.join(PT_KEYS)})")
        images, labels = data["images"], data["labels"]
        if images.dtype != torch.uint8 or images.shape[1:] != (32, 32, 3) or labels.dtype != torch.int64:
            raise FastcifarError(f"{path}: images {images.dtype} {tuple(images.shape)}, labels {labels.dtype}; "
                                 "CifarLoader expects uint8 [N,32,32,3] and int64")
        found[split] = len(labels)
    return found


# ---- airbench: the runs ---------------------------------------------------------------------------------
def spread(values: list[float]) -> dict:
    if not values:
        return {"median": None, "min": None, "max": None, "mean": None, "values": []}
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "mean": statistics.fmean(values), "values": values}


def loaders_on_cpu(ab) -> dict:
    """The dry run's check that airbench's own loader reads our files (gpu='cpu': no CUDA needed)."""
    hyp = ab.lib_airbench94.hyp
    train = ab.CifarLoader(DATA_FOLDER, train=True, batch_size=hyp["opt"]["batch_size"], aug=hyp["aug"],
                           altflip=True, gpu="cpu")
    test = ab.CifarLoader(DATA_FOLDER, train=False, batch_size=2000, gpu="cpu")
    return {"train_images": len(train.labels), "test_images": len(test.labels),
            "image_shape": list(train.images.shape[1:]), "classes": len(train.classes)}


def airbench_runs(ab, runs: int) -> list[dict]:
    """warmup94() then `runs` timed airbench94 runs; cwd is the work folder."""
    import torch

    hyp = ab.lib_airbench94.hyp
    tta_level = hyp["net"]["tta_level"]
    test_loader = ab.CifarLoader(DATA_FOLDER, train=False, batch_size=2000)
    with contextlib.redirect_stdout(sys.stderr):  # its progress lines; stdout ends with the table alone
        ab.warmup94()
    records = []
    for run in range(runs):
        load_start = time.perf_counter()
        train_loader = ab.CifarLoader(DATA_FOLDER, train=True, batch_size=hyp["opt"]["batch_size"],
                                      aug=hyp["aug"], altflip=True)  # train94's own default loader
        torch.cuda.synchronize()
        start = time.perf_counter()
        model = ab.train94(train_loader, verbose=False)
        top1_tta = ab.evaluate(model, test_loader, tta_level=tta_level)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        top1 = ab.evaluate(model, test_loader, tta_level=0)
        records.append({"run": run, "seconds": seconds, "load_seconds": start - load_start,
                        "top1_tta": 100 * top1_tta, "top1": 100 * top1})
        common.log(f"airbench94 run {run + 1}/{runs}: {seconds:.2f} s, top-1 {100 * top1_tta:.2f}% with TTA")
        del model, train_loader
    return records


def airbench_side(args, work: Path, digest: str) -> dict:
    ab = import_airbench(work / "airbench-src")
    hyp = ab.lib_airbench94.hyp
    out = {"version": sdist_version(work / "airbench-src"), "sdist": str(args.airbench), "sha256": digest,
           "trainer": "airbench94 (train94 with its hyp)", "hyp": hyp, "tta_level": hyp["net"]["tta_level"]}
    with cwd(work):
        if args.device == "cpu":
            return {"not_run": "needs CUDA", **out, "loader_check": loaders_on_cpu(ab)}
        try:
            records = airbench_runs(ab, args.runs)
        except Exception as e:  # our side's figures are written already; keep them, and say why this failed
            traceback.print_exc()
            first = (str(e).strip().splitlines() or [""])[0]
            return {**out, "error": f"{type(e).__name__}: {first}"}
    return {**out, "runs": records, "timing": TIMING, "warmup": "one untimed warmup94() (one training step)",
            **{k: spread([r[k] for r in records]) for k in ("seconds", "top1_tta", "top1", "load_seconds")}}


# ---- our side ---------------------------------------------------------------------------------------------
def ours_argv(args, out: Path) -> list[str]:
    run_root = ["--run-root", str(args.run_root)] if args.run_root else []
    return [sys.executable, "-m", "fastcifar.bench.time_to_accuracy", "--depths", str(args.depth),
            "--seeds", str(args.seeds), "--target", str(args.target), "--device", args.device,
            "--data", "cifar10", f"--data.root={args.data_root}", "--data.download=false", "--out", str(out),
            *run_root, *(DRY_RUN if args.device == "cpu" else []), *args.overrides]


def ours_side(args, work: Path) -> tuple[dict, list[str]]:
    """time_to_accuracy.py in a fresh process, its output echoed to stderr; its result, or an error."""
    out = work / "time_to_accuracy.json"
    argv = ours_argv(args, out)
    paths = [*map(str, args.dali_path), str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run stays on the CPU even where a GPU is present
    common.log(f"{PROG}: our side: {' '.join(argv[1:])}")
    tail: list[str] = []
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            sys.stderr.write(line)
            tail = [*tail[-4:], line.rstrip()]
    if proc.returncode != 0 or not out.is_file():
        last = next((line for line in reversed(tail) if line), "no output")
        return {"error": f"time_to_accuracy.py exited {proc.returncode}: {last}"}, argv
    return json.loads(out.read_text()), argv


# ---- both ---------------------------------------------------------------------------------------------------
def comparison(airbench: dict, ours: dict, depth: int) -> dict:
    """Seconds and accuracy side by side: airbench's median run, our time to target (mean over seeds)."""
    ab = {"seconds_median": (airbench.get("seconds") or {}).get("median"),
          "top1_tta_mean": (airbench.get("top1_tta") or {}).get("mean"),
          "top1_mean": (airbench.get("top1") or {}).get("mean"), "runs": len(airbench.get("runs", [])),
          "not_run": airbench.get("not_run"), "error": airbench.get("error")}
    depth_record = next((d for d in ours.get("depths", []) if d.get("depth") == depth), None)
    reached = (depth_record or {}).get("time_to_target") or {}
    recipe = depth_record["recipes"][reached["recipe"]] if reached.get("recipe") is not None else {}
    fc = {"model": f"resnet{depth}", "target": reached.get("target"), "status": reached.get("status"),
          "seconds_mean": (reached.get("wall_seconds") or {}).get("mean"),
          "seconds_without_compile_mean": (reached.get("wall_seconds_without_compile") or {}).get("mean"),
          "top1_mean": (recipe.get("final_top1") or {}).get("mean"),
          "best_mean_final_top1": reached.get("best_mean_final_top1"),
          "seeds": recipe.get("seeds") or next((r["seeds"] for r in (depth_record or {}).get("recipes", [])), None),
          "error": ours.get("error")}
    ratio = fc["seconds_mean"] / ab["seconds_median"] if fc["seconds_mean"] and ab["seconds_median"] else None
    return {"airbench94": ab, "fastcifar": fc, "fastcifar_seconds_over_airbench94": ratio}


def fmt(value, unit: str = "", digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}{unit}"


def markdown(result: dict) -> str:
    ab, fc = result["comparison"]["airbench94"], result["comparison"]["fastcifar"]
    seconds = result["airbench"].get("seconds") or {}
    ab_time = (f"median {fmt(ab['seconds_median'], ' s')} ({fmt(seconds.get('min'))}–{fmt(seconds.get('max'))})"
               if ab["seconds_median"] is not None else
               f"failed: {ab['error']}" if ab["error"] else f"not run ({ab['not_run'] or 'see the result file'})")
    ab_top1 = ("—" if ab["top1_tta_mean"] is None else
               f"{fmt(ab['top1_tta_mean'], '%')} with TTA ({fmt(ab['top1_mean'], '%')} without)")
    if fc["error"]:
        fc_time, fc_top1 = f"failed: {fc['error']}", "—"
    elif fc["status"] == "reached":
        fc_time = f"mean {fmt(fc['seconds_mean'], ' s')} (without compile {fmt(fc['seconds_without_compile_mean'], ' s')})"
        fc_top1 = fmt(fc["top1_mean"], "%")
    else:
        fc_time = f"{fc['target']}% not reached"
        fc_top1 = f"best mean final {fmt(fc['best_mean_final_top1'], '%')}"
    version = result["airbench"].get("version", "?")
    return common.markdown_table(["trainer", "runs", "seconds", "test top-1"], [
        [f"airbench94 (airbench {version})", ab["runs"], ab_time, ab_top1],
        [f"fastcifar {fc['model']} to {fc['target']}%", fc["seeds"] or "—", fc_time, fc_top1]])


def run(args, work: Path) -> int:
    args.data_root = args.data_root.resolve()  # airbench runs with the work folder as cwd
    digest = check_sdist(args.airbench)
    extract(args.airbench, work / "airbench-src")
    counts = write_pt(args.data_root, work)
    if check_pt(work) != counts:
        raise FastcifarError(f"{work / DATA_FOLDER}: the .pt files do not hold the npz's {counts} images")
    result = common.result("airbench_side_by_side", SCHEMA_VERSION, cpu=args.device == "cpu", complete=False,
                           settings={k: getattr(args, k) for k in ("runs", "depth", "seeds", "target", "device",
                                                                   "overrides")} | {"data_root": str(args.data_root)},
                           airbench={}, fastcifar={}, fastcifar_command=None, comparison={})
    result["command"] = result["environment"]["command"]
    # ours first: the GPU to itself, none of airbench's data or models on it yet
    result["fastcifar"], argv = ours_side(args, work)
    result["fastcifar_command"] = " ".join(argv[1:])
    common.write_json(args.out, result)
    result["airbench"] = airbench_side(args, work, digest)
    result["comparison"] = comparison(result["airbench"], result["fastcifar"], args.depth)
    result["complete"] = True
    common.write_json(args.out, result)
    common.log(f"wrote {args.out}")
    print(markdown(result))
    return 1 if "error" in result["fastcifar"] or "error" in result["airbench"] else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise FastcifarError("--device cuda: no CUDA device here (--device cpu is the dry run)")
        if args.work_dir:
            args.work_dir.mkdir(parents=True, exist_ok=True)
            return run(args, args.work_dir.resolve())
        with tempfile.TemporaryDirectory(prefix="airbench_side_by_side_") as tmp:
            return run(args, Path(tmp))
    except FastcifarError as e:
        stderr_line(f"{PROG}: error: {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
