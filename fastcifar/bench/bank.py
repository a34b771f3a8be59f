"""Bank what came back from a GPU machine's output folder into the repository, named so that it says when and
on which GPU it was made, ready to commit; then `python benchmarks/report.py` regenerates the README tables.

    python benchmarks/bank.py OUT/*

- `paper-resnet<D>-seed<S>.tar.gz` (a GPU suite paper-r<D> step): the run into benchmarks/results/paper_runs/,
  its weights beside it, its result file into benchmarks/results/ (paper_bundle.py says how).
- a JSON file with an `environment` (every result file and every step report of the GPU suite):
  benchmarks/results/<date>T<hh>-<mm>_<gpu>_<name>.json, the time (UTC, to the minute, since a step runs
  again on later machines) and GPU from that environment.
- a `.log`, `.xml` or `.json.gz` file (a step's log, its test report, a profiler trace): beside the JSON file
  of the same name, with its prefix; alone, with the date and GPU of the JSON files banked in the same call.
A name that already starts with a date keeps it. A different file already banked under the target name is
refused, as is any other kind of file, an archive older than the run the bank holds, or two archives of one
run, each in one line, before anything is written; a `.tmp` file (a write cut short) is skipped.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

from fastcifar.bench import common, paper_bundle

DATED = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}-\d{2})?_")
COMPANIONS = (".log", ".xml", ".json.gz")  # a step's log, its test report, a profiler trace


class Refused(Exception):
    pass


def prefix_of(path: Path) -> str | None:
    """'<date>_<gpu>_' from a JSON file's environment, or None when it has none."""
    try:
        env = json.loads(path.read_text()).get("environment")
    except (OSError, ValueError, AttributeError):
        raise Refused(f"{path}: not a JSON object") from None
    if not isinstance(env, dict) or not env.get("date"):
        return None
    return f"{env['date'][:16].replace(':', '-')}_{common.slug(env.get('gpu'))}_"  # to the minute: steps repeat


def plan(files: list[Path], results_dir: Path, bank: Path) -> list[tuple[Path, Path | None]]:
    """(file, target) for every file; target None for a paper-run archive (paper_bundle.bank places it)."""
    prefixes, runs = {}, {}
    for f in files:
        if f.suffix == ".json":
            prefix = prefix_of(f)
            if prefix is None:
                raise Refused(f"{f}: no environment with a date: not a result file of this project")
            prefixes[f.stem] = prefix
    moves = []
    for f in files:
        if f.name.endswith(".tar.gz"):
            try:
                run = paper_bundle.check_not_backwards(f, bank)
            except paper_bundle.BundleError as e:
                raise Refused(str(e)) from None
            if run in runs:
                raise Refused(f"{f} and {runs[run]} both hold {run}: bank one call's output at a time")
            runs[run] = f
            moves.append((f, None))
            continue
        if f.suffix != ".json" and not f.name.endswith(COMPANIONS):
            raise Refused(f"{f}: not a result (expected .json, .log, .xml, a .json.gz trace or a paper-run .tar.gz)")
        only = set(prefixes.values())
        prefix = prefixes.get(f.stem) or (only.pop() if len(only) == 1 else None)
        if prefix is None:
            raise Refused(f"{f}: no JSON result of the same name or call says its date and GPU; bank it with one")
        target = results_dir / (f.name if DATED.match(f.name) else prefix + f.name)
        if target.exists() and target.read_bytes() != f.read_bytes():
            raise Refused(f"{f}: {target} exists and differs; remove it first if this one replaces it")
        moves.append((f, target))
    return moves


def main(argv: list[str] | None = None) -> int:
    p = common.parser("bank.py", __doc__)
    p.add_argument("files", type=Path, nargs="+", help="what the output folder brought back")
    p.add_argument("--results-dir", type=Path, default=common.RESULTS_DIR)
    p.add_argument("--bank", type=Path, default=paper_bundle.BANK, help="where paper runs are banked")
    args = p.parse_args(argv)
    folders = [f for f in args.files if f.is_dir()]
    if folders:
        p.error(f"{folders[0]} is a folder: pass the files in it ({folders[0]}/*)")
    missing = [f for f in args.files if not f.is_file()]
    if missing:
        p.error(f"{missing[0]}: no such file")
    for f in [f for f in args.files if f.name.endswith(".tmp")]:  # a write that a kill cut short
        print(f"skipped {f}: an unfinished write (its command was stopped while writing it)")
    args.files = [f for f in args.files if not f.name.endswith(".tmp")]
    try:
        moves = plan(args.files, args.results_dir, args.bank)
    except Refused as e:
        p.exit(2, f"bank.py: error: {e}\n")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    for source, target in moves:
        if target is None:
            args.bank.mkdir(parents=True, exist_ok=True)
            print(paper_bundle.bank(source, args.bank, args.results_dir))
        else:
            shutil.copyfile(source, target)  # the output folder's copies may be read-only: copy, do not move
            print(f"{source.name} -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
