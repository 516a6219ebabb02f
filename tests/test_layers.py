"""The layers (DESIGN.md §5, §6): every public package imports first in a fresh interpreter, every
module imports, and nothing in the library layer imports ``guidance`` or ``rewards`` at all (an
AST scan over every nesting level, so imports inside functions count too)."""
import ast
import importlib
import pkgutil
import subprocess
import sys

import pytest

from tests.helpers import ROOT

# Only these may import the strategy and reward packages: the command line, the experiment tools
# and the two worlds (which train and evaluate with them).
APP_LAYER = ("entrgi_core/cli.py", "entrgi_core/lightning_cli.py", "entrgi_core/tools/", "entrgi_core/tinyworld/", "entrgi_core/realworld/")


def library_modules():
    for path in sorted((ROOT / "entrgi_core").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if not rel.startswith(APP_LAYER):
            yield rel, path


def imported_packages(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_library_layer_imports_no_strategy_or_reward_package():
    offenders = {rel: sorted(imported_packages(path) & {"guidance", "rewards"}) for rel, path in library_modules()}
    offenders = {rel: names for rel, names in offenders.items() if names}
    assert not offenders, f"library modules importing guidance/rewards: {offenders}"
    assert len(list(library_modules())) >= 20          # the scan did see the library


def test_the_scan_sees_imports_inside_functions(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    if True:\n        from guidance.base import X\n    import rewards.hf\n")
    assert imported_packages(probe) == {"guidance", "rewards"}


def test_every_module_imports():
    for pkg in ("entrgi_core", "guidance", "rewards"):
        module = importlib.import_module(pkg)
        for info in pkgutil.walk_packages(module.__path__, prefix=f"{pkg}."):
            importlib.import_module(info.name)


@pytest.mark.slow
@pytest.mark.parametrize("package", ["guidance", "rewards", "entrgi_core", "entrgi_core.cli", "entrgi_core.tools.demo",
                                     "entrgi_core.training", "entrgi_core.schedules", "entrgi_core.realworld",
                                     "entrgi_core.serving", "entrgi_core.lightning_cli"])
def test_each_public_package_imports_first_in_a_fresh_interpreter(package):
    proc = subprocess.run([sys.executable, "-c", f"import {package}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_installing_brings_the_runtime_dependencies():
    from importlib import metadata

    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    build = " ".join(project["build-system"]["requires"])
    for name in ("setuptools", "torch", "ninja"):
        assert name in build
    assert "pybind11" not in build                      # the op library needs no pybind module
    requires = metadata.requires("entrgi") or []
    names = {r.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip().lower() for r in requires
             if "extra ==" not in r}
    assert {"torch", "transformers", "lightning", "jsonargparse", "tokenizers", "safetensors"} <= names
    extras = set(metadata.metadata("entrgi").get_all("Provides-Extra") or [])
    assert {"test", "demo", "paper"} <= extras


def test_make_runs_the_two_readme_commands_and_a_fast_subset():
    import os

    proc = subprocess.run(["make", "-n", "demo", "test", "test-fast"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "MAKEFLAGS": ""})
    assert proc.returncode == 0 and "entrgi_core.tools.demo" in proc.stdout
    assert "pytest -q tests" in proc.stdout and 'pytest -q -m "not slow" tests' in proc.stdout
