"""The code base's shape: no import cycles, no sys.path edits, and a README layout table that
matches the tree (issue #14 asked for all three; these keep them)."""

import ast
import re

from conftest import REPO

PACKAGES = ("fastcifar",)


def modules() -> dict[str, ast.Module]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            found[name] = ast.parse(path.read_text(), str(path))
    return found


def imports(tree: ast.Module, known: dict) -> set[str]:
    """The project modules `tree` imports anywhere (function-level imports too). `from pkg import
    sub` depends on pkg.sub when that is a module, not on pkg's own code."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{a.name}" for a in node.names]
            out.update([s for s in subs if s in known] or ([node.module] if node.module in known else []))
    return out


def test_no_import_cycles():
    known = modules()
    graph = {name: imports(tree, known) - {name} for name, tree in known.items()}

    def path_back(start: str) -> list[str] | None:  # a path start -> ... -> start, if any
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = [" -> ".join(c) for c in map(path_back, sorted(graph)) if c]
    assert not cycles, cycles
    assert "fastcifar.pipelines" in graph["fastcifar.training.trainer"]  # the graph is read, not empty


def test_no_sys_path_edits():
    edits = []
    for path in [*REPO.glob("*.py"), *(p for d in (*PACKAGES, "benchmarks", "tests") for p in (REPO / d).rglob("*.py"))]:
        lines = path.read_text().splitlines() if path.name != "test_layout.py" else []
        edits += [f"{path.relative_to(REPO)}:{n}" for n, line in enumerate(lines, 1) if "sys.path" in line]
    assert not edits, edits


def test_readme_layout_table_matches_the_tree():
    readme = (REPO / "README.md").read_text()
    table = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    for named in re.findall(r"`([\w./-]+)`", table):
        if "/" in named or named.endswith(".py"):
            candidates = [REPO / named] + [REPO / d / named for d in (*PACKAGES, "fastcifar/training", "fastcifar/pipelines", "fastcifar/bench", "fastcifar/configs", "benchmarks")]
            assert any(c.exists() for c in candidates), f"README layout names {named}, which does not exist"
    for package in (*PACKAGES, "fastcifar/training", "fastcifar/pipelines", "fastcifar/bench", "benchmarks"):
        for path in (REPO / package).glob("*.py"):
            if path.name != "__init__.py":
                assert f"{path.name}`" in table, f"README layout does not name {path.relative_to(REPO)}"
