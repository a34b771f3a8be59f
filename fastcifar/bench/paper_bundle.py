"""Paper runs that outlive a GPU machine: each run of reproduce.py travels as one archive, is banked in the
repository, and comes back to the next machine to be resumed from its checkpoint.

    # on the GPU machine, around reproduce.py (the GPU suite's paper-r<D> steps do this):
    python benchmarks/paper_bundle.py restore --depth 20 --seeds 0 1 2 --runs-dir RUNS
    python benchmarks/reproduce.py --depths 20 --seeds 0 1 2 --runs-dir RUNS --out RUNS/results ...
    python benchmarks/paper_bundle.py pack --depth 20 --seeds 0 1 2 --runs-dir RUNS --out OUT
    # back on the development machine, with the archives that came back (bank.py calls bank() below):
    python benchmarks/bank.py OUT/paper-resnet20-seed*.tar.gz

An archive holds the run directory (config.yaml, metrics.jsonl, log.txt, summary.json and, while the run is
unfinished, the one checkpoint a resume starts from), its final weights and its result file once finished.
bank() puts the run into benchmarks/results/paper_runs/resnet<D>-seed<S>/ (replacing what was there), the
weights beside it as resnet<D>-seed<S>.pt (what export_weights.py --weights-from reads) and the result file
into benchmarks/results/. `restore` copies the banked, unfinished runs into the run folder, where
reproduce.py resumes them (a run already in that folder, from an earlier call on the same machine, is kept);
a finished run is not restored, and `unfinished` lists the seeds left to run.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import sys
import tarfile
from pathlib import Path

from fastcifar import rundir
from fastcifar.bench import common
from fastcifar.errors import FastcifarError
from fastcifar.training import checkpoint as ckpt

BANK = common.RESULTS_DIR / "paper_runs"
RUN_FILES = ("config.yaml", "metrics.jsonl", "log.txt", "summary.json")
MAX_ARCHIVE_BYTES = 16 * 2**20  # what one file of an output folder may weigh on the GPU machine
RESULTS = "results"  # reproduce.py's --out inside the run folder: its result files


class BundleError(FastcifarError):
    pass


def run_name(depth: int, seed: int) -> str:
    return f"resnet{depth}-seed{seed}"


def archive_name(depth: int, seed: int) -> str:
    return f"paper-{run_name(depth, seed)}.tar.gz"


def unfinished(bank: Path, depth: int, seeds: list[int]) -> list[int]:
    """The seeds whose banked run is missing or not finished."""
    return [s for s in seeds if not rundir.is_finished(bank / run_name(depth, s))]


def restore(bank: Path, runs_dir: Path, depth: int, seeds: list[int]) -> list[str]:
    """Copy each banked unfinished run (one with a checkpoint) into runs_dir; returns what was restored."""
    done = []
    for seed in unfinished(bank, depth, seeds):
        source, target = bank / run_name(depth, seed), runs_dir / run_name(depth, seed)
        if ckpt.latest_checkpoint(source) is None:
            continue  # nothing to resume: reproduce.py starts it afresh
        if target.exists():  # run on this machine since it was banked: at least as far as the bank
            done.append(f"{run_name(depth, seed)}: kept the run in {target}")
            continue
        shutil.copytree(source, target)
        done.append(f"{run_name(depth, seed)}: restored at epoch {ckpt.latest_epoch(target)}")
    return done


def members(runs_dir: Path, depth: int, seed: int, results: Path) -> list[tuple[Path, str]]:
    """(file, name in the archive) of one run; only the newest checkpoint while it is unfinished."""
    name = run_name(depth, seed)
    run = runs_dir / name
    files = [(run / f, f"{name}/{f}") for f in RUN_FILES if (run / f).is_file()]
    if rundir.is_finished(run):
        weights = runs_dir / f"{name}.pt"
        if weights.is_file():
            files.append((weights, f"{name}.pt"))
        files += [(p, f"{RESULTS}/{p.name}") for p in sorted(results.glob(f"*_paper_resnet{depth}_seed{seed}.json"))]
    elif (latest := ckpt.latest_checkpoint(run)) is not None:
        files.append((latest, f"{name}/{latest.name}"))
    return files


def pack(runs_dir: Path, out: Path, depth: int, seeds: list[int], results: Path | None = None) -> list[Path]:
    """One archive per run that has a run folder, each under MAX_ARCHIVE_BYTES; results: reproduce.py's --out
    (default runs_dir/results). Every run is packed before a run too large to travel is reported."""
    written, errors = [], []
    out.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        files = members(runs_dir, depth, seed, results or runs_dir / RESULTS)
        if not files:
            continue
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
            for path, arcname in files:
                tar.add(path, arcname=arcname)
        if buffer.tell() > MAX_ARCHIVE_BYTES:
            errors.append(f"{archive_name(depth, seed)} would be {buffer.tell() / 2**20:.1f} MiB, over the "
                          f"{MAX_ARCHIVE_BYTES / 2**20:.0f} MiB an output file may have")
            continue
        path = out / archive_name(depth, seed)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(buffer.getvalue())
        tmp.replace(path)
        written.append(path)
    if errors:
        raise BundleError("; ".join(errors) + (f" (packed: {', '.join(p.name for p in written)})" if written else ""))
    return written


def archive_run(archive: Path) -> str:
    """The run an archive holds (resnet<D>-seed<S>), checked to be a paper-run archive and safe to unpack."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            names = tar.getnames()
    except (OSError, tarfile.TarError) as e:
        raise BundleError(f"{archive}: not a readable .tar.gz ({type(e).__name__})") from None
    runs = {n.split("/")[0] for n in names if "/" in n and not n.startswith(f"{RESULTS}/")}
    bad = [n for n in names if n.startswith("/") or ".." in Path(n).parts]
    if len(runs) != 1 or bad or not re.fullmatch(r"resnet\d+-seed\d+", next(iter(runs))):
        raise BundleError(f"{archive} is not a paper-run archive (expected one resnet<D>-seed<S>/ folder, "
                          f"found {sorted(runs) or names[:3]})")
    return runs.pop()


def progress(finished: bool, checkpoint: str | None) -> tuple:
    """How far a run got, comparable: finished beats any checkpoint, a later checkpoint an earlier one."""
    return (1,) if finished else (0, *(ckpt.position(checkpoint) or (-1, -1))) if checkpoint else (-1,)


def describe(rank: tuple) -> str:
    return "finished" if rank == (1,) else f"at epoch {rank[1]}, step {rank[2]} of the next" if len(rank) == 3 \
        else "without a checkpoint"


def archive_progress(archive: Path, name: str) -> tuple:
    with tarfile.open(archive, "r:gz") as tar:
        names = tar.getnames()
        member = f"{name}/summary.json"
        summary = json.loads(tar.extractfile(member).read()) if member in names else {}
    checkpoints = sorted((ckpt.position(n), n) for n in names if ckpt.position(n))
    return progress(bool(summary.get("finished")), checkpoints[-1][1] if checkpoints else None)


def bank_progress(run: Path) -> tuple:
    latest = ckpt.latest_checkpoint(run)
    return progress(rundir.is_finished(run), latest.name if latest else None)


def check_not_backwards(archive: Path, bank_dir: Path) -> str:
    """The run an archive holds, refused when the bank already holds that run further on (an older archive)."""
    name = archive_run(archive)
    banked, coming = bank_progress(bank_dir / name), archive_progress(archive, name)
    if (bank_dir / name).is_dir() and banked > coming:
        raise BundleError(f"{archive}: the bank's {name} is {describe(banked)}, the archive's only "
                          f"{describe(coming)}: an older archive (remove {bank_dir / name} to bank it anyway)")
    return name


def bank(archive: Path, bank_dir: Path, results_dir: Path) -> str:
    """Unpack one archive into the bank and the results folder; returns a line saying what it holds."""
    name = check_not_backwards(archive, bank_dir)
    target, staging = bank_dir / name, bank_dir / f".{name}.incoming"
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(staging, filter="data")
    shutil.rmtree(target, ignore_errors=True)  # the archive holds the run's whole history: it replaces the bank's
    (staging / name).replace(target)
    if (staging / f"{name}.pt").is_file():
        (staging / f"{name}.pt").replace(bank_dir / f"{name}.pt")
    for result in sorted((staging / RESULTS).glob("*.json")) if (staging / RESULTS).is_dir() else []:
        results_dir.mkdir(parents=True, exist_ok=True)
        result.replace(results_dir / result.name)
    shutil.rmtree(staging)
    summary = rundir.read_json(target / "summary.json") or {}
    latest = ckpt.latest_checkpoint(target)
    state = (f"finished, final top-1 {summary.get('final_top1')}" if summary.get("finished")
             else f"unfinished, resumes from {latest.name}" if latest else "unfinished, no checkpoint")
    return f"{name}: {state}"


def build_parser():
    p = common.parser("paper_bundle.py", __doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("restore", "pack", "unfinished"):
        s = sub.add_parser(name, formatter_class=common.Formatter)
        s.add_argument("--depth", type=common.depth, required=True)
        s.add_argument("--seeds", type=common.non_negative_int, nargs="+", default=[0, 1, 2])
        s.add_argument("--bank", type=Path, default=BANK, help="the banked runs")
        if name != "unfinished":
            s.add_argument("--runs-dir", type=Path, required=True, help="reproduce.py's --runs-dir")
        if name == "pack":
            s.add_argument("--out", type=Path, required=True, help="folder for the archives")
            s.add_argument("--results", type=Path, help="reproduce.py's --out (default: RUNS_DIR/results)")
            s.add_argument("--status", type=Path, help="reproduce.py's status file, copied to --status-to")
            s.add_argument("--status-to", type=Path, help="where the status file goes (the output folder)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        if args.command == "unfinished":
            print(json.dumps(unfinished(args.bank, args.depth, args.seeds)))
        elif args.command == "restore":
            args.runs_dir.mkdir(parents=True, exist_ok=True)
            for line in restore(args.bank, args.runs_dir, args.depth, args.seeds) or ["nothing to restore"]:
                print(line)
        else:
            if args.status and args.status_to and args.status.is_file():  # first: the runs' fate, whatever follows
                shutil.copyfile(args.status, args.status_to)
            for path in pack(args.runs_dir, args.out, args.depth, args.seeds, args.results):
                print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB")
    except BundleError as e:
        p.exit(1, f"paper_bundle.py: error: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
