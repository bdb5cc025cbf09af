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
    "fafnet-study": "fafnet.cli.study:cli",
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



def imported_test_modules(source: str):
    """The test modules (test_*) a Python source imports: `import tests.test_x`,
    `from tests.test_x import ...`, `from tests import test_x`, `from .test_x import ...`."""
    import ast
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            # `from tests import test_x` imports a module; `from tests.helpers import test_y` a name.
            names = [base] + [f"{base}.{alias.name}".lstrip(".") for alias in node.names if base in ("", "tests")]
        else:
            continue
        found += [name for name in names if any(part.startswith("test_") for part in name.split("."))]
    return found


def test_no_test_module_imports_another_test_module():
    """Shared fixtures live in tests/conftest.py and shared helpers in tests/helpers.py, so a
    test module can run (and be changed) alone."""
    assert imported_test_modules("import tests.test_a\nfrom tests.test_b import x\nfrom tests import test_c, helpers\n"
                                 "from .test_d import y\nfrom tests.helpers import test_like_name\n") == [
        "tests.test_a", "tests.test_b", "tests.test_c", "test_d"]
    folder = os.path.join(ROOT, "tests")
    names = sorted(name for name in os.listdir(folder) if name.endswith(".py"))
    assert len(names) > 20
    offenders = {name: imported_test_modules(open(os.path.join(folder, name), encoding="utf-8").read())
                 for name in names}
    assert {name: found for name, found in offenders.items() if found} == {}
