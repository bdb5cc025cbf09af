"""The package imports one way only (tests/tools/import_graph.py), and its console scripts
are declared and run."""
import importlib.metadata
import os
import subprocess
import sys

import pytest

from tests.tools import import_graph

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONSOLE_SCRIPTS = {
    "fafnet-train": "fafnet.cli.train:cli",
    "fafnet-evaluate": "fafnet.cli.evaluate:cli",
    "fafnet-segment": "fafnet.cli.segment:cli",
    "fafnet-preprocess": "fafnet.cli.preprocess:cli",
    "fafnet-results": "fafnet.cli.results:cli",
}


def test_no_package_imports_a_higher_layer_and_no_module_cycle():
    graph = import_graph.module_graph()
    assert len(graph) > 50 and "fafnet.models.fafnet" in graph
    assert import_graph.layer_violations(graph) == []
    assert import_graph.find_cycle(graph) == []


def test_every_package_has_a_layer():
    packages = {name for name in os.listdir(os.path.join(ROOT, "fafnet"))
                if os.path.isfile(os.path.join(ROOT, "fafnet", name, "__init__.py"))}
    layered = {p.split(".")[1] for group in import_graph.LAYERS for p in group}
    assert packages == layered


def _write_package(tmp_path, files):
    for name, text in files.items():
        path = tmp_path / "fafnet" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph.module_graph(str(tmp_path))


def test_the_checker_finds_an_upward_import_and_a_cycle(tmp_path):
    graph = _write_package(tmp_path, {
        "__init__.py": "",
        "io/__init__.py": "", "io/a.py": "def f():\n    from fafnet.models import b\n",
        "models/__init__.py": "", "models/b.py": "from . import c\n", "models/c.py": "import fafnet.models.b\n",
    })
    assert graph["fafnet.io.a"] == {"fafnet.models.b"}       # a deferred import counts
    assert graph["fafnet.models.b"] == {"fafnet.models.c"}   # a relative one too
    problems = import_graph.layer_violations(graph)
    assert problems == ["fafnet.io.a imports fafnet.models.b: fafnet.models is in a higher layer than fafnet.io"]
    assert import_graph.find_cycle(graph) == ["fafnet.models.b", "fafnet.models.c", "fafnet.models.b"]


def test_the_checker_refuses_imports_between_packages_of_one_layer(tmp_path):
    graph = _write_package(tmp_path, {
        "__init__.py": "", "training/__init__.py": "", "evaluation/__init__.py": "",
        "training/loop.py": "from fafnet.evaluation.protocol import evaluate\n", "evaluation/protocol.py": "",
    })
    assert import_graph.layer_violations(graph) == [
        "fafnet.training.loop imports fafnet.evaluation.protocol: fafnet.evaluation is in the same layer "
        "as fafnet.training"]


def test_console_scripts_are_declared_in_the_installed_metadata():
    try:
        entry_points = importlib.metadata.distribution("fafnet-fsmis").entry_points
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("the project is not installed: run `make setup` (pip install -e .)")
    declared = {e.name: e.value for e in entry_points if e.group == "console_scripts"}
    assert declared == CONSOLE_SCRIPTS
    for entry in entry_points:
        assert callable(entry.load())


@pytest.mark.parametrize("script, expected", [
    ("fafnet-train", "n_steps"), ("fafnet-evaluate", "checkpoint"),
    ("fafnet-segment", "--support-image"), ("fafnet-preprocess", "supervoxels"),
    ("fafnet-results", "aggregate")])
def test_console_scripts_run_from_outside_the_repository(tmp_path, script, expected):
    path = os.path.join(os.path.dirname(sys.executable), script)
    assert os.path.exists(path), f"{path} missing: run `make setup`"
    argv = [path, "print_config"] if script in ("fafnet-train", "fafnet-evaluate") else [path, "--help"]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout + done.stderr
