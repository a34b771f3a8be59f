"""Recipes as data: every shipped config's training keys against the README's recipe table, both
ways (a recipe without a row, a row without a recipe, or one number changed in either fails), and
the paper recipe's values as He et al. 2016 and the seed recipe give them."""

import pytest
import yaml
from conftest import REPO, tables

CONFIGS = REPO / "fastcifar" / "configs"
# the keys the issue asks the table to pin: depth, the optimiser, batch, length, schedule, smoothing,
# erasing and the normalisation
REQUIRED = {"model.name", "model.shortcut", "optim.lr", "optim.momentum", "optim.nesterov", "optim.weight_decay",
            "optim.no_wd_bn_bias", "optim.label_smoothing", "train.batch_size", "train.epochs", "schedule.name",
            "schedule.warmup_epochs", "schedule.warmup_start_lr", "schedule.milestones", "schedule.gamma",
            "schedule.final_lr", "augment.crop_padding", "augment.flip_p", "augment.erase_p", "augment.mean",
            "augment.std"}


def shipped() -> dict[str, dict]:
    """Recipe name (as it loads: resnet56, fast/resnet56) -> its YAML tree."""
    return {str(p.relative_to(CONFIGS).with_suffix("")): yaml.safe_load(p.read_text())
            for p in sorted(CONFIGS.rglob("*.yml"))}


def readme_table() -> dict[str, dict]:
    """Recipe name -> {dotted key: value} from the README's recipe table."""
    found = [t for t in tables((REPO / "README.md").read_text()) if t and "recipe" in t[0]]
    assert len(found) == 1, "README.md: expected one table with a 'recipe' column"
    rows = {}
    for row in found[0]:
        name = row.pop("recipe").strip("`")
        assert name not in rows, f"README recipe table: {name} twice"
        rows[name] = {key.strip("`"): cell_value(cell) for key, cell in row.items()}
    return rows


def cell_value(cell: str):
    value = yaml.safe_load(cell)
    if isinstance(value, str):  # YAML 1.1 reads 1e-05 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            return value
    return value


def test_the_table_has_every_required_column():
    columns = set(next(iter(readme_table().values())))
    assert REQUIRED <= columns, f"README recipe table lacks {sorted(REQUIRED - columns)}"


def test_every_shipped_recipe_has_a_row_and_every_row_a_recipe():
    configs, table = shipped(), readme_table()
    assert sorted(configs) == sorted(table), (f"shipped but not in the README table: {sorted(set(configs) - set(table))}; "
                                              f"in the table but not shipped: {sorted(set(table) - set(configs))}")


@pytest.mark.parametrize("name", sorted(shipped()))
def test_recipe_matches_the_readme_table(name):
    tree, row = shipped()[name], readme_table().get(name)
    assert row is not None, f"{name}: no row in the README recipe table"
    for key, documented in row.items():
        section, field = key.split(".")
        actual = tree[section][field]
        assert actual == documented, f"{name}: {key} is {actual!r} in the config but {documented!r} in the README table"


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110, 1202])
def test_the_paper_configs_are_the_seed_recipe(depth):
    """He et al. 2016 section 4.2 (lr 0.1, momentum 0.9, wd 1e-4, batch 128, x0.1 at epochs 100/150
    of the seed's 200, option A) with the seed recipe's warm-up, smoothing, erasing and ImageNet
    statistics."""
    tree = shipped()[f"resnet{depth}"]
    assert tree["model"] == {"name": f"resnet{depth}", "shortcut": "A"}
    o, s, t, a = tree["optim"], tree["schedule"], tree["train"], tree["augment"]
    assert (o["lr"], o["momentum"], o["nesterov"], o["weight_decay"], o["label_smoothing"]) == (0.1, 0.9, False, 1e-4, 0.1)
    assert (t["batch_size"], t["epochs"]) == (128, 200)
    assert (s["name"], s["milestones"], s["gamma"], s["warmup_epochs"]) == ("multistep", [100, 150], 0.1, 10)
    assert (a["crop_padding"], a["flip_p"], a["erase_p"]) == (4, 0.5, 0.5)
    assert (a["mean"], a["std"]) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110, 1202])
def test_the_fast_configs_normalise_with_cifar10_statistics(depth):
    a = shipped()[f"fast/resnet{depth}"]["augment"]
    assert (a["mean"], a["std"]) == ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])
