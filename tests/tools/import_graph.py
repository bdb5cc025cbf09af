"""The package's import graph, read from the source with `ast` (nothing is imported).

    python tests/tools/import_graph.py          # the package graph and any violation

`fafnet` is layered by concern; a module may import modules of its own package and of
packages in lower layers only (`LAYERS`, lowest first), and the module graph has no cycle.
Imports inside functions count too: a deferred import is still a dependency.
"""
import ast
import os
import sys
from collections import defaultdict
from typing import Dict, List, Set

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = "fafnet"
# Lowest first. Packages in one layer are independent of each other.
LAYERS = (
    ("fafnet.io",),                                         # files: NIfTI, DICOM, layout, atomic writes, logs
    ("fafnet.datasets",),                                   # dataset facts: labels, classes, folds
    ("fafnet.preprocessing", "fafnet.supervoxels"),         # raw scans -> pre-processed volumes, pseudo-labels
    ("fafnet.synthetic", "fafnet.episodes", "fafnet.models"),  # phantom; loading and episodes; networks
    ("fafnet.runtime",),                                    # devices, seeds, run folders, snapshots
    ("fafnet.training", "fafnet.evaluation"),               # the training loop; the protocol and its results
    ("fafnet.inference",),                                  # segmenting new scans
    ("fafnet.cli",),                                        # Sacred experiments and console commands
)


def module_name(path: str, root: str) -> str:
    parts = os.path.relpath(path, root)[:-len(".py")].split(os.sep)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: str, name: str, known: Set[str]) -> Set[str]:
    """The package modules `path` (module `name`) imports; `from pkg import mod` counts as mod."""
    tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def module_graph(root: str = ROOT) -> Dict[str, Set[str]]:
    """module -> the package modules it imports."""
    paths = {}
    for folder, _, names in os.walk(os.path.join(root, PACKAGE)):
        for file_name in names:
            if file_name.endswith(".py"):
                path = os.path.join(folder, file_name)
                paths[module_name(path, root)] = path
    known = set(paths)
    return {name: imported_modules(path, name, known) for name, path in sorted(paths.items())}


def package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def layer_violations(graph: Dict[str, Set[str]], layers=LAYERS) -> List[str]:
    rank = {package: i for i, group in enumerate(layers) for package in group}
    problems = []
    for module, targets in graph.items():
        own = package_of(module)
        if own == PACKAGE:
            continue
        if own not in rank:
            problems.append(f"{module}: package {own} is in no layer (tests/tools/import_graph.py LAYERS)")
            continue
        for target in sorted(targets):
            other = package_of(target)
            if other == own or other == PACKAGE and target == PACKAGE:
                continue
            if other not in rank or rank[other] >= rank[own]:
                where = "the same layer as" if rank.get(other) == rank[own] else "a higher layer than"
                problems.append(f"{module} imports {target}: {other} is in {where} {own}")
    return problems


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle as [a, b, ..., a], or [] when the graph has none."""
    state: Dict[str, int] = {}   # 1: on the current path, 2: finished
    path: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = 2
        path.pop()
        return []

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return []


def package_edges(graph: Dict[str, Set[str]]) -> Dict[str, Set[str]]:
    edges: Dict[str, Set[str]] = defaultdict(set)
    for module, targets in graph.items():
        for target in targets:
            if package_of(target) != package_of(module):
                edges[package_of(module)].add(package_of(target))
    return edges


def main() -> int:
    graph = module_graph()
    edges = package_edges(graph)
    for group in LAYERS:
        for package in group:
            print(f"{package:22s} -> {', '.join(sorted(edges.get(package, ()))) or '(nothing)'}")
    problems = layer_violations(graph)
    cycle = find_cycle(graph)
    if cycle:
        problems.append("import cycle: " + " -> ".join(cycle))
    for problem in problems:
        print("VIOLATION:", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
