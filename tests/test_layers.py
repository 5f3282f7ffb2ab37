"""Layers point one way: core <- models, serving <- pipelines <- dags; benchmarks beside them.

Read from the source (every ``import`` statement, including those inside functions), so a lazy
import cannot hide a wrong-way dependency.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import REPO_ROOT

PACKAGES = ("core", "models", "serving", "pipelines", "dags", "benchmarks", "features")
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "models": {"core"},
    "serving": {"core"},
    "features": {"core"},
    "pipelines": {"core", "models", "serving", "features"},
    "benchmarks": {"core", "models", "serving", "pipelines"},
    "dags": {"core", "pipelines"},
}
TRAINING_LIBRARIES = (
    "mlflow",
    "lightgbm",
    "prophet",
    "feast",
    "shap",
    "great_expectations",
    "evidently",
    "airflow",
    "sklearn",
)


def _imports(path: Path) -> set[str]:
    """Top-level names of every module a file imports (absolute imports)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _package_edges() -> dict[str, dict[str, list[str]]]:
    edges: dict[str, dict[str, list[str]]] = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            name = str(path.relative_to(REPO_ROOT))
            for target in _imports(path) & set(PACKAGES):
                if target != package:
                    edges.setdefault(package, {}).setdefault(target, []).append(name)
    return edges


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_the_layers_below_it(package: str) -> None:
    wrong = {
        target: files
        for target, files in _package_edges().get(package, {}).items()
        if target not in ALLOWED[package]
    }
    assert not wrong, f"{package} imports {wrong}"


def test_the_package_graph_has_no_cycle() -> None:
    edges = {package: set(targets) for package, targets in _package_edges().items()}
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        assert node not in visiting, f"import cycle: {' -> '.join([*path, node])}"
        if node in done:
            return
        visiting.add(node)
        for target in sorted(edges.get(node, ())):
            visit(target, [*path, node])
        visiting.discard(node)
        done.add(node)

    for package in PACKAGES:
        visit(package, [])


def test_nothing_below_dags_imports_airflow() -> None:
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for package in PACKAGES
        if package != "dags"
        for path in (REPO_ROOT / package).rglob("*.py")
        if "airflow" in _imports(path)
    ]
    assert not offenders


def test_the_serving_process_loads_no_training_library() -> None:
    code = (
        "import sys, serving.app; app = serving.app.create_app(); "
        f"print(sorted(m for m in {TRAINING_LIBRARIES!r} if m in sys.modules))"
    )
    tokens = {"FORESCALE_API_TOKEN": "w" * 32, "FORESCALE_API_READ_TOKEN": "r" * 32}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
        timeout=300,
        env={**os.environ, **tokens},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout + result.stderr
