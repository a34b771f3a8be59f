"""The GPU suite: validation and measurements for a GPU machine, as named steps, each one command that
finishes within a few minutes on one H100, each runnable alone, in the order a GPU round runs them.

    python benchmarks/gpu_suite.py STEP [STEP ...] --data-root /root/data --dali-path /root/site --out "$OUT"

Every step writes `<step>.log` (the full output of its commands) and `<step>.json` (each command, its exit
status, seconds and checks) into --out as it goes, measurements as `<step>-<what>.json` (throughput.py writes
them after every depth), and prints a short table last. The exit status is 1 when any command failed or a
check did not hold, 2 on bad options. `--device cpu` is the dry run: every step at tiny sizes on the CPU
(ResNet-8, a few steps), so that a typo never reaches a GPU; the test suite dry-runs one step of each kind
and has the scripts parse every step's GPU-size commands.

Steps (issue #20: 1 validate, 2 loaders, 3 the step and a profile, 4 packing, 5 time to 92%, 6 paper runs,
7 airbench); the estimates are for one H100 and come from the
H100 results in benchmarks/results/ (2026-11-23): a cold compile of ResNet-20 took 20 s at batch 1024,
ResNet-56 34 s and ResNet-110 65 s at batch 512 (the first step minus a typical one); throughput.py compiles
each (depth, batch) cold and again warm (taken as half of cold), times 3 x 20 steps of the model alone
(ResNet-110 at batch 512: 13k images/s) and an epoch of warm-up plus 3 x 20 steps end to end; add 15 s of
start-up (imports, data) per process. The CUDA tests: the 2026-11-23 run of test_dali.py took 11 s; the
engine's compile tests compile ResNet-8 (about 15 s each, 4 of them). The tta-* estimates take the same
results' end-to-end rates (STEPS says which) plus a cold compile and start-up per seed; the paper-* steps fill
their command: runs not finished by then stop with a checkpoint and leave, like finished ones, as one
archive per run in --out, which `benchmarks/bank.py OUT/*` puts into the repository and the next paper-*
call, on any machine, resumes from.
"""

from __future__ import annotations

import time

_STARTED = time.monotonic()  # --budget counts from here: start-up is part of the command's time

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from fastcifar.bench import common
from fastcifar.environment import REPO

# the ways the step is run (issue #20, step 3): each a set of config overrides for throughput.py
WAYS = {
    "graph": ["--train.cuda_graph=true"],  # the whole step as one CUDA graph (fused SGD); auto in the dry run
    "reduce-overhead": ["--train.compile_mode=reduce-overhead"],  # torch.compile's own CUDA graphs
    "plain": [],  # compiled (default mode), no graph
    "foreach": ["--optim.implementation=foreach"],  # as plain, foreach SGD instead of fused
}
EAGER = {"eager": ["--train.compile=false"]}  # ResNet-1202 uncompiled: a figure whatever its compile costs
CUDA_TEST_FILES = {
    "tests-loaders": ["tests/test_loaders.py", "tests/test_dali.py", "tests/test_dali_runs.py"],
    "tests-engine": ["tests/test_engine.py", "tests/test_training.py"],
}
RECIPE = "configs/resnet20.yml"


@dataclass
class Command:
    """One process of a step. check(result) -> a problem, or None when the command did what it should."""

    what: str
    argv: list[str] | Callable[[], list[str]]  # a callable is built when the command starts
    check: Callable[[dict], str | None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    stop_when: Callable[[], bool] | None = None  # then SIGTERM it (the stop-and-resume run)
    out: Path | None = None  # the JSON it writes, if any
    reserve: float = 0.0  # seconds it may run even past the step's deadline (packing what the step made)


@dataclass
class Step:
    name: str
    what: str
    minutes: float  # expected on one H100 (module docstring: how)
    commands: Callable[[argparse.Namespace], list[Command]]
    limit: float = 480.0  # seconds the step may take (--limit overrides), then killed


# ---- sizes: the GPU round's, or the dry run's ------------------------------------------------------
def sizes(args) -> dict:
    if args.device == "cpu":
        return {"train": ["--model.name=resnet8", "--train.batch_size=32", "--loader.eval_batch_size=100",
                          "--loader.workers=0", "--train.log_every=2"],
                "max_steps": 3, "stop_epochs": 6, "depths": ["8"], "batch_sizes": ["32"],
                "timing": ["--steps", "2", "--warmup", "0", "--repeats", "1"], "workers": 0,
                # time to accuracy: ResNet-8 by the fast ResNet-20 recipe, one seed, one epoch
                "tta": ["--depths", "8", "--config", str(REPO / "configs/fast/resnet20.yml"), "--epochs", "1", "--train.batch_size=32", "--loader.eval_batch_size=100",
                        "--loader.workers=0", "--train.log_every=2"],
                # paper runs: one epoch of the step's recipe
                "paper": ["--train.epochs=1", "--train.batch_size=32", "--loader.eval_batch_size=100",
                          "--loader.workers=0", "--train.log_every=2"],
                # profile: ResNet-8 at batch 32, 3 profiled steps
                "profile": ["--depth", "8", "--batch-size", "32", "--steps", "3", "--warmup", "2",
                            "--synthetic-size", "256", "--loader", "torchvision", "--loader.workers=0"],
                # packing: 1 and 2 ResNet-8 runs of 40 steps (two epochs of the 256 images at batch 16)
                "packing": ["--counts", "1", "2", "--steps", "40", "--warmup-steps", "4", "--train.batch_size=16",
                            "--model.name=resnet8", "--loader.name=torchvision", "--loader.workers=0",
                            "--train.log_every=2"]}
    return {"train": ["--train.log_every=20"], "max_steps": 100, "stop_epochs": 30, "depths": None,
            "batch_sizes": None, "timing": ["--steps", "20", "--warmup", "5", "--repeats", "3"], "workers": 16,
            "tta": [], "paper": [], "packing": ["--counts", "1", "2", "4", "8"], "profile": None}


def run_py(args, run_dir: Path, *extra: str) -> list[str]:
    """A training run of the seed recipe on the staged data (never a download), into run_dir."""
    return [sys.executable, "run.py", RECIPE, f"--data.root={args.data_root}", "--data.download=false",
            f"--train.device={args.device}", "--train.progress=false", f"--train.run_dir={run_dir}",
            *sizes(args)["train"], *extra]


def summary_of(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def expect(run_dir: Path, exit_code: int, status: str, **fields) -> Callable[[dict], str | None]:
    """A check: the exit status, and summary.json's status (and any other fields) as given."""
    def check(result: dict) -> str | None:
        summary = result["summary"] = summary_of(run_dir)
        if result["exit"] != exit_code:
            return f"exit {result['exit']}, expected {exit_code}"
        wanted = {"status": status, **fields}
        wrong = {k: summary.get(k) for k, v in wanted.items() if summary.get(k) != v}
        return f"summary.json has {wrong}, expected {wanted}" if wrong else None

    return check


# ---- step 1: validate -------------------------------------------------------------------------------
def cuda_tests(name: str):
    def commands(args) -> list[Command]:
        xml = args.out / f"{name}.xml"
        files = args.test_files or CUDA_TEST_FILES[name]
        argv = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "cuda",
                f"--junitxml={xml}", *files]

        def check(result: dict) -> str | None:
            counts = junit_counts(xml)
            result["tests"] = counts
            if result["exit"] != 0:
                return f"pytest exit {result['exit']}: {counts}"
            if counts.get("tests", 0) == 0:
                return "no test ran"
            if args.device == "cuda" and counts.get("skipped"):
                return f"{counts['skipped']} CUDA tests skipped on a GPU machine (see the log's skip reasons)"
            return None

        # DALI tests fail instead of skipping when DALI is missing (tests/conftest.py: import_dali)
        return [Command(f"pytest -m cuda ({len(files)} files)", argv, check, env={"FASTCIFAR_REQUIRE_DALI": "1"})]

    return commands


def junit_counts(path: Path) -> dict:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")} if suite is not None else {}


def short_runs(args) -> list[Command]:
    """The trainer end to end on the real data, cut short by train.max_steps: one run per loader, and
    the whole-step graph with the prefetcher (on CPU cuda_graph=auto, which runs the plain step)."""
    graph = way_overrides(args, "graph")[0].split("=")[1]
    runs = {"dali": ["--loader.name=dali"], "torch-gpu": ["--loader.name=torch-gpu"],
            "torch-gpu-graph": ["--loader.name=torch-gpu", f"--train.cuda_graph={graph}"]}
    n = sizes(args)["max_steps"]
    out = []
    for label, extra in runs.items():
        run_dir = fresh_dir(args.runs / label)
        fields = {"steps": n, "cuda_graph": True} if label.endswith("graph") and graph == "true" else {"steps": n}
        out.append(Command(f"run.py {label}, {n} steps", run_py(args, run_dir, *extra, f"--train.max_steps={n}"),
                           expect(run_dir, 0, "cut_short", **fields)))
    return out


def stop_resume_and_nccl(args) -> list[Command]:
    """SIGTERM during the first epoch: the run stops at its next step with a checkpoint of that step
    (exit 3); --resume continues from that checkpoint for train.max_steps more steps (exit 0). Then one
    process under torchrun: a process group of one (NCCL on CUDA, gloo on CPU) and DDP, cut short."""
    run_dir = fresh_dir(args.runs / "stop-resume")
    s = sizes(args)
    first = run_py(args, run_dir, "--loader.name=torch-gpu", f"--train.epochs={s['stop_epochs']}")

    def logged() -> bool:  # a first step line: the signal handler is in place, the first epoch under way
        return (run_dir / "metrics.jsonl").is_file() and (run_dir / "metrics.jsonl").stat().st_size > 0

    def events(kind: str) -> list[dict]:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").is_file() else []
        return [r for r in map(json.loads, lines) if r.get("event") == kind]

    def resume_argv() -> list[str]:  # built when it runs: max_steps more than where the first run stopped
        return [*first, "--resume", f"--train.max_steps={summary_of(run_dir).get('steps', 0) + s['max_steps']}"]

    stopped_at = {}

    def after_stop(result: dict) -> str | None:
        stopped_at.update(summary_of(run_dir))
        stops = events("stopped")
        return expect(run_dir, 3, "stopped")(result) or (
            None if stops and stopped_at.get("steps", 0) >= 1 else "no stop at a step was logged")

    def resumed(result: dict) -> str | None:  # it went on from the stop's checkpoint, not all anew
        steps = stopped_at.get("steps", 0) + s["max_steps"]
        resumes, stops = events("resume"), events("stopped")
        if not (resumes and stops and resumes[-1].get("checkpoint") == stops[-1].get("checkpoint")):
            return "the run did not resume from the checkpoint its stop wrote"
        return expect(run_dir, 0, "cut_short", steps=steps)(result)

    ddp_dir = fresh_dir(args.runs / "torchrun")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                *run_py(args, ddp_dir, "--loader.name=torch-gpu", f"--train.max_steps={s['max_steps']}")[1:]]
    nccl = {"NCCL_DEBUG": "INFO"} if args.device == "cuda" else {}
    return [Command("run.py, SIGTERM in epoch 1", first, after_stop, stop_when=logged),
            Command("run.py --resume, max_steps more", resume_argv, resumed),
            Command("torchrun --nproc_per_node=1 run.py", torchrun,
                    expect(ddp_dir, 0, "cut_short", world_size=1), env=nccl)]


def fresh_dir(path: Path) -> Path:
    """A run directory no earlier call has written into (a stale summary.json must not pass a check)."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    return path


# ---- steps 2 and 3: measurements through throughput.py -------------------------------------------------
def throughput(args, label: str, depths: list[str], batch_sizes: list[str], loaders: list[str], *overrides: str,
               alone: bool = False) -> Command:
    s = sizes(args)
    out = args.out / f"{args.current}-{label}.json"
    argv = [sys.executable, "-m", "fastcifar.bench.throughput", "--device", args.device,
            "--data", "cifar10", f"--data.root={args.data_root}", "--data.download=false",
            "--depths", *(s["depths"] or args.depths or depths),
            "--batch-sizes", *(s["batch_sizes"] or args.batch_sizes or batch_sizes),
            "--loaders", *(args.loaders or loaders), *(timing_args(args) or s["timing"]),
            "--no-baseline", f"--loader.workers={s['workers']}", "--out", str(out), *overrides]

    def check(result: dict) -> str | None:
        if result["exit"] != 0:
            return f"exit {result['exit']}"
        data = json.loads(out.read_text()) if out.is_file() else {}
        errors = [e for r in data.get("results", []) for b in r["batches"] for e in figure_errors(b)]
        if not data.get("complete"):
            return "the result file is missing or incomplete"
        return f"figures failed: {errors[0]}" if errors else None

    return Command(f"throughput {label}", argv, check, out=out)


def figure_errors(batch: dict) -> list[str]:
    """The errors of one batch size's figures: the model alone, each loader, its two figures."""
    figures = [batch["model_alone"], *(entry for loader in batch["loaders"].values()
                                       for entry in (loader, loader.get("loader_alone"), loader.get("end_to_end")))]
    return [f["error"] for f in figures if isinstance(f, dict) and f.get("error")]


def timing_args(args) -> list[str]:
    given = {"--steps": args.timed_steps, "--warmup": args.warmup, "--repeats": args.repeats}
    if all(v is None for v in given.values()):
        return []
    default = dict(zip(sizes(args)["timing"][::2], sizes(args)["timing"][1::2]))
    return [x for k, v in given.items() for x in (k, str(v if v is not None else default[k]))]


def loaders_step(args) -> list[Command]:
    """ResNet-20 at batch 1024: loader alone, model alone and end to end for every loader; then DALI with
    the other crop operator (loader.dali_crop)."""
    return [throughput(args, "loaders", ["20"], ["1024"], ["dali", "torch-gpu", "torchvision"]),
            throughput(args, "dali-warp-affine", ["20"], ["1024"], ["dali"], "--loader.dali_crop=warp_affine")]


def step_step(depth: int, ways: list[str], batch_sizes: tuple[str, ...] = ("1024", "128")):
    def commands(args) -> list[Command]:
        return [throughput(args, way, [str(depth)], list(batch_sizes), ["torch-gpu"], *way_overrides(args, way))
                for way in (args.ways or ways)]

    return commands


def way_overrides(args, way: str) -> list[str]:
    """On the CPU (the dry run) a graph cannot be captured: cuda_graph=auto runs the same command quietly."""
    return [o.replace("cuda_graph=true", "cuda_graph=auto") if args.device == "cpu" else o
            for o in {**WAYS, **EAGER}[way]]


# ---- where the time goes ---------------------------------------------------------------------------------
PROFILES = {"r20-b128": (20, 128, True), "r110-b1024": (110, 1024, False)}  # depth, batch, with a trace


def profile_step(args) -> list[Command]:
    """profile_step.py: the step under torch.profiler, model alone and end to end (torch-gpu, synthetic data):
    ResNet-20 at batch 128 (launch-bound, with a Chrome trace) and ResNet-110 at batch 1024 (compute-bound)."""
    commands = []
    for label, (depth, batch, trace) in PROFILES.items():
        out = args.out / f"{args.current}-{label}.json"
        sized = sizes(args)["profile"] or ["--depth", str(depth), "--batch-size", str(batch)]
        argv = [sys.executable, "-m", "fastcifar.bench.profile_step", "--device", args.device, *sized,
                *(["--trace", str(args.out / f"{args.current}-{label}.trace.json.gz")] if trace else []),
                "--out", str(out), *settings(args)]
        commands.append(Command(f"profile_step {label}", argv, out=out))
    return commands


# ---- step 4: several runs on one GPU ---------------------------------------------------------------------
def packing_step(args) -> list[Command]:
    """packing.py: 1, 2, 4 and 8 concurrent ResNet-20 runs at batch 128 (the paper recipe), their total
    images/s over the window in which all of them train; the best count is the paper runs' --parallel."""
    out = args.out / f"{args.current}-result.json"
    argv = [sys.executable, "-m", "fastcifar.bench.packing", "--device", args.device, "--recipe", RECIPE,
            "--data-root", str(args.data_root), "--runs-root", str(fresh_dir(args.runs / args.current)),
            "--out", str(out), *sizes(args)["packing"], *settings(args)]

    def check(result: dict) -> str | None:
        if result["exit"] != 0:
            return f"exit {result['exit']}"
        data = json.loads(out.read_text()) if out.is_file() else {}
        return None if data.get("complete") else "the result file is missing or incomplete"

    return [Command("packing.py, 1 2 4 8 runs at once", argv, check, out=out)]


# ---- step 7: side by side with the speed peer ------------------------------------------------------------
def airbench_step(args) -> list[Command]:
    """airbench_side_by_side.py: our time to 92% (ResNet-56's fast recipe, one seed) and airbench94 (5 timed
    runs after a warm-up) on the same GPU in one command and one result file."""
    out = args.out / f"{args.current}-result.json"
    argv = [sys.executable, "-m", "fastcifar.bench.airbench_side_by_side", "--device", args.device,
            "--data-root", str(args.data_root), "--seeds", "1", "--run-root", str(fresh_dir(args.runs / args.current)),
            "--work-dir", str(fresh_dir(args.runs / f"{args.current}-work")), "--out", str(out), *settings(args)]
    return [Command("airbench94 and time_to_accuracy resnet56, one GPU", argv, out=out)]


# ---- steps 5 and 6: accuracy -------------------------------------------------------------------------
def settings(args) -> list[str]:
    """--set KEY=VALUE options as config overrides for the accuracy runs."""
    return [f"--{kv}" for kv in args.set]


def tta_step(depth: int, seed: int):
    def commands(args) -> list[Command]:
        """time_to_accuracy.py for one depth with its configs/fast/ recipe, one seed (compiled cold, the
        compile time reported apart); report.py combines the seeds' result files into one."""
        out = args.out / f"{args.current}-result.json"
        tiny = sizes(args)["tta"]
        argv = [sys.executable, "-m", "fastcifar.bench.time_to_accuracy", "--device", args.device,
                "--data", "cifar10", f"--data.root={args.data_root}", "--data.download=false",
                *([] if "--depths" in tiny else ["--depths", str(depth)]), *tiny, "--seeds", "1",
                "--first-seed", str(seed), "--run-root", str(fresh_dir(args.runs / args.current)),
                "--out", str(out), *settings(args)]

        def check(result: dict) -> str | None:
            if result["exit"] != 0:
                return f"exit {result['exit']}"
            data = json.loads(out.read_text()) if out.is_file() else {}
            return None if data.get("complete") else "the result file is missing or incomplete"

        return [Command(f"time_to_accuracy resnet{depth}, seed {seed}", argv, check, out=out)]

    return commands


PACK_SECONDS = 30.0  # kept after reproduce.py's deadline and grace for packing the runs
GRACE_SECONDS = 60.0  # reproduce.py's --grace: a stop is at the next step, seconds at most


def paper_step(depth: int):
    def commands(args) -> list[Command]:
        """configs/resnet<depth>.yml in full, the seeds packed (--parallel): the banked unfinished runs are
        restored and resumed, reproduce.py stops them with checkpoints before the step's time is up, and
        every run leaves as one archive in --out (paper_bundle.py bank puts it into the repository)."""
        from fastcifar.bench import paper_bundle

        seeds = paper_bundle.unfinished(args.bank, depth, args.seeds)
        if not seeds:
            return [Command(f"resnet{depth}: every seed finished", [sys.executable, "-c", ""])]
        runs_dir = args.runs / "paper"  # kept: a second call on the same machine resumes from here
        chosen = ["--depth", str(depth), "--seeds", *map(str, seeds)]

        def reproduce() -> list[str]:  # built when it starts: the step's time left decides the deadline
            left = args.step_deadline - time.monotonic() - PACK_SECONDS - GRACE_SECONDS
            return [sys.executable, "-m", "fastcifar.bench.reproduce", "--depths", str(depth),
                    "--seeds", *map(str, seeds), "--parallel", str(args.parallel), "--deadline", f"{max(left, 0):.0f}",
                    "--grace", f"{GRACE_SECONDS:.0f}", "--data-root", str(args.data_root),
                    "--runs-dir", str(runs_dir), "--out", str(runs_dir / "results"), "--data.download=false",
                    *sizes(args)["paper"], *settings(args)]

        def packed(result: dict) -> str | None:
            archives = [args.out / paper_bundle.archive_name(depth, s) for s in seeds]
            result["archives"] = [a.name for a in archives if a.is_file()]
            if result["exit"] != 0:
                return f"exit {result['exit']}"
            return None if len(result["archives"]) == len(seeds) else "a run left no archive"

        bundle = [sys.executable, "-m", "fastcifar.bench.paper_bundle"]
        status = runs_dir / "results" / "reproduce_status.json"
        return [Command("restore the banked runs", [*bundle, "restore", *chosen, "--bank", str(args.bank),
                                                    "--runs-dir", str(runs_dir)]),
                Command(f"reproduce.py resnet{depth}, seeds {' '.join(map(str, seeds))}", reproduce, out=status),
                # runs even when reproduce.py overran the step's time: what the runs did must leave the machine
                Command("pack each run for the bank", [*bundle, "pack", *chosen, "--runs-dir", str(runs_dir),
                                                      "--out", str(args.out), "--status", str(status),
                                                      "--status-to", str(args.out / f"{args.current}-status.json")],
                        packed, reserve=PACK_SECONDS)]

    return commands


STEPS = {s.name: s for s in [
    Step("tests-loaders", "CUDA tests of the loaders, DALI required", 2, cuda_tests("tests-loaders")),
    Step("tests-engine", "CUDA tests of the step, graphs, prefetch and trainer", 4, cuda_tests("tests-engine")),
    Step("runs", "ResNet-20 runs cut short: dali, torch-gpu, torch-gpu + cuda_graph", 2.5, short_runs),
    Step("stop-resume", "SIGTERM then --resume; one NCCL process group under torchrun", 3, stop_resume_and_nccl),
    Step("loaders", "R20 batch 1024: every loader; DALI by multi_paste and warp_affine", 3, loaders_step),
    *[Step(f"step-r{depth}-{part}", f"R{depth} at batch 1024 and 128: {' and '.join(ways)}", minutes,
           step_step(depth, ways))
      for depth, minutes in ((20, 3), (56, 5)) for part, ways in (("graphs", ["graph", "reduce-overhead"]),
                                                                  ("plain", ["plain", "foreach"]))],
    *[Step(f"step-r110-{way}", f"R110 at batch 1024 and 128: {way}", 4.5, step_step(110, [way])) for way in WAYS],
    # R1202 (the 4k images/s at batch 1024, once): uncompiled, about 200 steps of about 0.2 s; then
    # compiled, whose compile is not measured yet (R110's took 65 s; R1202 has 11 times its blocks)
    Step("step-r1202-eager", "R1202 at batch 1024, not compiled", 2, step_step(1202, ["eager"], ("1024",))),
    Step("step-r1202-plain", "R1202 at batch 1024, compiled: the compile may fill the command", 9,
         step_step(1202, ["plain"], ("1024",)), limit=540.0),
    # two processes: start-up, a cold compile (R20 20 s, R110 65 s), an epoch of synthetic data end to end
    Step("profile", "where the time goes: R20 batch 128 (with a trace) and R110 batch 1024, torch.profiler", 2.5,
         profile_step),
    # per count: start-up and compile (20 s cold, the on-disk cache warm after the first), 200 steps, 15 s
    Step("packing", "1, 2, 4, 8 concurrent R20 batch-128 runs: total images/s", 4, packing_step),
    # time to 92%, one seed a command: the fast recipes' images (R32 40 epochs, R56 and R110 50) at the
    # 2026-11-23 end-to-end rates (R56 19k, R110 9.8k images/s at batch 512; R32 taken as R56's x 56/32), a
    # cold compile (R32 taken as 25 s) and 15 s of start-up; the goals (30, 25, 60 s) would halve them
    *[Step(f"tta-r{depth}-s{seed}", f"time to 92%: configs/fast/resnet{depth}.yml, seed {seed}", minutes,
           tta_step(depth, seed), limit=540.0) for depth, minutes in ((56, 3), (32, 1.7), (110, 5.6))
      for seed in (0, 1, 2)],
    # our R56 seed as in tta-r56-s0 (3 min), airbench94's warm-up and 5 runs (its 3.8 s each on an A100)
    Step("airbench", "side by side: airbench94 and our R56 time to 92%, one result file", 4, airbench_step,
         limit=540.0),
    # paper runs fill the command: what is not finished by then is stopped with a checkpoint and banked
    *[Step(f"paper-r{depth}", f"configs/resnet{depth}.yml, 200 epochs, the unfinished seeds, resumable", 9,
           paper_step(depth), limit=540.0) for depth in (20, 32, 44, 56, 110)],
]}
GROUPS = {"validate": ["tests-loaders", "tests-engine", "runs", "stop-resume"],
          "measure": ["loaders", *[n for n in STEPS if n.startswith("step-")], "profile"],
          "accuracy": [n for n in STEPS if n.startswith(("packing", "tta-", "paper-"))],
          "peer": ["airbench"]}


# ---- running ----------------------------------------------------------------------------------------
KILL_GRACE = 20.0  # seconds from the SIGTERM at a deadline to the SIGKILL: runs stop at their next step


def run_command(cmd: Command, env: dict, log, deadline: float) -> dict:
    """One command; at the deadline (the step's, or its own reserve past it) SIGTERM to its process group,
    so that training runs stop with a checkpoint, then SIGKILL after KILL_GRACE."""
    argv = cmd.argv() if callable(cmd.argv) else cmd.argv
    log.write(f"\n== {cmd.what}: {shlex.join(argv)}\n")
    log.flush()
    start = time.monotonic()
    deadline = max(deadline, start + cmd.reserve)
    proc = subprocess.Popen(argv, cwd=REPO, env={**env, **cmd.env}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    signalled = timed_out = False
    while proc.poll() is None:
        now = time.monotonic()
        if now > deadline and not timed_out:  # the step's time is up: stop it, keep what it wrote
            timed_out = True
            os.killpg(proc.pid, signal.SIGTERM)
        if timed_out and now > deadline + KILL_GRACE:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        if cmd.stop_when is not None and not signalled and cmd.stop_when():
            proc.send_signal(signal.SIGTERM)
            signalled = True
        time.sleep(0.1)
    result = {"what": cmd.what, "command": shlex.join(argv), "exit": proc.wait(),
              "seconds": round(time.monotonic() - start, 1), "signalled": signalled}
    if cmd.stop_when is not None and not signalled:
        problem = "exited before the signal could be sent"
    elif timed_out:
        problem = "stopped at the step's time limit (--limit, --budget)"
    else:
        problem = cmd.check(result) if cmd.check else (None if result["exit"] == 0 else f"exit {result['exit']}")
    result["problem"] = problem
    log.write(f"== {cmd.what}: exit {result['exit']} after {result['seconds']} s"
              f"{': ' + problem if problem else ''}\n")
    log.flush()
    return result


def run_step(step: Step, args) -> list[dict]:
    args.current = step.name
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in [*args.dali_path, str(REPO), os.environ.get("PYTHONPATH")] if p))
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run stays on the CPU even where a GPU is present
    report = {"step": step.name, "what": step.what, "expected_minutes_h100": step.minutes, "device": args.device,
              "results": []}
    limit = step.limit if args.limit is None else args.limit
    deadline = args.step_deadline = min(time.monotonic() + limit, budget_end(args))
    with open(args.out / f"{step.name}.log", "a") as log:
        for cmd in step.commands(args):
            report["results"].append(run_command(cmd, env, log, deadline))
            common.write_json(args.out / f"{step.name}.json", {**report, "environment": environment_line()})
    return report["results"]


def budget_end(args) -> float:
    """When the whole command's --budget runs out (monotonic clock); infinity without one."""
    return float("inf") if args.budget is None else _STARTED + args.budget


def environment_line() -> dict:
    from fastcifar.environment import environment

    return environment()


def parse_args(argv):
    p = common.parser("gpu_suite.py", __doc__)
    names = [*STEPS, *GROUPS]
    p.add_argument("names", nargs="+", metavar="STEP", choices=names, help=f"one or more of: {', '.join(names)}")
    p.add_argument("--data-root", type=Path, default=Path("/root/data"),
                   help="holds cifar10/{train,test}.npz (where the staging guide puts it)")
    p.add_argument("--dali-path", type=Path, nargs="*", default=[Path("/root/site")],
                   help="folders put before PYTHONPATH, where DALI is installed (none: --dali-path)")
    p.add_argument("--out", type=Path, default=Path("gpu_out"), help="the output folder: logs and JSON")
    p.add_argument("--runs", type=Path, help="run directories (default: <out>/../gpu_runs, kept out of --out)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: the dry run, tiny sizes")
    p.add_argument("--limit", type=common.seconds, help="seconds a step may take, then stopped (default: the "
                   "step's own: 540 for the tta-*, paper-* and airbench steps, else 480)")
    p.add_argument("--budget", type=common.seconds, help="seconds the whole command may take (a machine's limit "
                   "per command): no step runs past it, and a step is not started with less than --min-step left")
    p.add_argument("--min-step", type=common.seconds, default=120.0, help="with --budget: seconds a step needs to start")
    p.add_argument("--depths", nargs="+", help="throughput depths instead of the step's")
    p.add_argument("--batch-sizes", nargs="+", help="throughput batch sizes instead of the step's")
    p.add_argument("--loaders", nargs="+", help="throughput loaders instead of the step's")
    p.add_argument("--ways", nargs="+", choices=list(WAYS), help="the ways a step-* step runs the step")
    p.add_argument("--steps", dest="timed_steps", type=common.positive_int,
                   help="timed steps per repeat (throughput.py)")
    p.add_argument("--warmup", type=common.non_negative_int, help="untimed steps (throughput.py)")
    p.add_argument("--repeats", type=common.positive_int, help="timings per figure (throughput.py)")
    p.add_argument("--test-files", nargs="+", help="CUDA test files instead of the step's")
    p.add_argument("--seeds", type=common.non_negative_int, nargs="+", default=[0, 1, 2], help="paper-r* seeds")
    p.add_argument("--parallel", type=common.positive_int, default=3, help="paper-r* runs at once (see packing)")
    p.add_argument("--bank", type=Path, help="banked paper runs to resume (default: benchmarks/results/paper_runs; "
                   "in the dry run an empty folder beside --out)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", type=override,
                   help="config overrides for the training runs of the profile, packing, tta-*, paper-* and "
                        "airbench steps, e.g. loader.name=torch-gpu")
    args = p.parse_args(argv)
    args.names = list(dict.fromkeys(s for name in args.names for s in GROUPS.get(name, [name])))
    if not (args.data_root / "cifar10" / "train.npz").is_file():
        p.exit(2, f"gpu_suite.py: error: --data-root: {args.data_root}/cifar10/train.npz not found "
                  "(the staging guide's data lands in /root/data)\n")
    missing = [str(d) for d in args.dali_path if not d.is_dir()]
    if missing:
        p.exit(2, f"gpu_suite.py: error: --dali-path: {missing[0]} is not a folder (give --dali-path with no "
                  "folder where DALI is installed normally)\n")
    from fastcifar.environment import COMMIT_VARIABLE, is_commit

    if os.environ.get(COMMIT_VARIABLE) and not is_commit(os.environ[COMMIT_VARIABLE]):
        p.exit(2, f"gpu_suite.py: error: {COMMIT_VARIABLE}={os.environ[COMMIT_VARIABLE]!r} is not a commit id "
                  "(7 to 40 hex digits, as git rev-parse HEAD writes it)\n")
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.runs = (args.runs or args.out.parent / "gpu_runs").resolve()
    if args.bank is None:  # the dry run must not resume the GPU's banked runs on the CPU
        from fastcifar.bench import paper_bundle

        args.bank = args.runs / "dry-run-bank" if args.device == "cpu" else paper_bundle.BANK
    args.bank = args.bank.resolve()
    args.data_root = args.data_root.resolve()
    return args


def override(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z_]\w*\.[A-Za-z_]\w*=.*", text):
        raise argparse.ArgumentTypeError(f"expected SECTION.KEY=VALUE, e.g. loader.name=torch-gpu, got {text!r}")
    return text


def table(rows: list[tuple[str, dict]]) -> str:
    return common.markdown_table(["step", "command", "exit", "seconds", "result"], [
        [step, r["what"], r["exit"], r["seconds"], r["problem"] or "ok"] for step, r in rows])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from fastcifar.environment import COMMIT_VARIABLE

    if environment_line()["git"]["commit"] is None:  # a copy of the tree without .git: say which code ran
        common.log(f"gpu_suite.py: warning: no git commit is known here; start the command with "
                   f"{COMMIT_VARIABLE}=<sha of the tree> so that every result names its code")
    rows = []
    for name in args.names:
        step = STEPS[name]
        if budget_end(args) - time.monotonic() < args.min_step:
            common.log(f"gpu_suite.py: {name} and the steps after it not started: less than --min-step "
                       f"{args.min_step:g} s of --budget {args.budget:g} s left")
            rows += [(n, {"what": "not started (--budget)", "exit": None, "seconds": 0, "problem": "not started"})
                     for n in args.names[args.names.index(name):]]
            break
        common.log(f"gpu_suite.py: {name}: {step.what} (about {step.minutes} min on one H100)")
        rows += [(name, r) for r in run_step(step, args)]
    print(table(rows))
    failed = [r for _, r in rows if r["problem"]]
    print(f"gpu_suite.py: {len(rows) - len(failed)} of {len(rows)} commands ok; logs and JSON in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
