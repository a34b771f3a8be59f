"""time_to_accuracy.py's records built from run records alone: a recipe's statistics over its runs, the time
to a target, a depth's record, and result files of one setting combined across seeds (for report.py)."""

from __future__ import annotations

import json
from pathlib import Path

from fastcifar.bench import common

# what makes runs one recipe's: recipe_digest, the hash of every recipe key, tells a tuned file from the old
RECIPE_KEYS = ("config", "epochs", "batch_size", "lr", "schedule", "loader", "recipe_digest")


def stat(values: list[float]) -> dict:
    mean, std = common.mean_std(values) if values else (None, None)
    return {"mean": mean, "std": std, "values": values}


def recipe_of_runs(recipe: dict, runs: list[dict]) -> dict:
    """A recipe's record (RECIPE_KEYS from `recipe`) with its runs and the statistics over them."""
    crossings = [r["first_crossing"] for r in runs if r["first_crossing"]]
    return {
        **{k: recipe.get(k) for k in RECIPE_KEYS}, "seeds": len(runs), "runs": runs,
        **{k: stat([r[k] for r in runs if r[k] is not None]) for k in
           ("final_top1", "wall_seconds", "wall_seconds_without_compile", "compile_seconds")},
        "first_crossing_seconds": {**stat([c["wall_seconds"] for c in crossings]), "count": len(crossings)},
    }


def time_to(recipes: list[dict], target: float | None) -> dict | None:
    """The fastest recipe whose mean final accuracy reaches `target`, or 'not reached'."""
    if target is None:
        return None
    means = {i: r["final_top1"]["mean"] for i, r in enumerate(recipes) if r["final_top1"]["mean"] is not None}
    best = min((i for i, mean in means.items() if mean >= target), default=None,
               key=lambda i: recipes[i]["wall_seconds"]["mean"])
    chosen = {} if best is None else recipes[best]
    return {"target": target, "status": "not reached" if best is None else "reached", "recipe": best,
            **{k: chosen.get(k) for k in ("wall_seconds", "wall_seconds_without_compile")},
            "best_mean_final_top1": max(means.values(), default=None)}


def depth_record(depth: int, recipes: list[dict], target: float) -> dict:
    paper = common.PAPER_TOP1.get(depth)
    return {"depth": depth, "model": f"resnet{depth}", "paper_top1": paper, "recipes": recipes,
            "time_to_target": time_to(recipes, target), "time_to_paper": time_to(recipes, paper)}


def combine(results: list[tuple[Path, dict]]) -> list[tuple[Path, dict]]:
    """Results of the same settings on the same device that differ only in their seeds (--first-seed, e.g.
    one seed per command) as one result each: every recipe's runs from all of them, a seed run twice counted
    once (the newest), the statistics and times to target recomputed. The others are returned as they are."""
    def key(data: dict) -> str:
        s = {k: v for k, v in data["settings"].items() if k not in ("seeds", "first_seed", "run_root")}
        return json.dumps(s, sort_keys=True, default=str)

    groups: dict[str, list[tuple[Path, dict]]] = {}
    for path, data in results:
        groups.setdefault(key(data), []).append((path, data))
    combined = []
    for group in groups.values():
        if len(group) == 1:
            combined.append(group[0])
            continue
        group.sort(key=lambda item: item[1].get("environment", {}).get("date", ""))  # oldest first
        recipes: dict[int, dict[tuple, dict]] = {}  # depth -> recipe -> {"recipe": record, "runs": {seed: run}}
        for _path, data in group:
            for d in data["depths"]:
                for r in d["recipes"]:
                    entry = recipes.setdefault(d["depth"], {}).setdefault(
                        tuple(r.get(k) for k in RECIPE_KEYS), {"recipe": r, "runs": {}})
                    entry["runs"].update({run["seed"]: run for run in r["runs"]})
        path, newest = group[-1]
        target = newest["settings"]["target"]
        seeds = sorted({seed for by_recipe in recipes.values() for e in by_recipe.values() for seed in e["runs"]})
        combined.append((path, {
            **newest, "complete": all(data.get("complete") for _p, data in group),
            "settings": {**newest["settings"], "seeds": len(seeds), "first_seed": None, "seed_list": seeds},
            "combined_from": [p.name for p, _d in group],
            "depths": [depth_record(depth, [recipe_of_runs(e["recipe"], [e["runs"][k] for k in sorted(e["runs"])])
                                            for e in by_recipe.values()], target)
                       for depth, by_recipe in sorted(recipes.items())]}))
    return combined
