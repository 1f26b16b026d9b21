"""Every third-party module the project imports is declared in pyproject.toml.

The check parses the imports (``import x``, ``from x import y``, ``pytest.importorskip("x")``) of
``lohp_cli/``, ``tests/``, ``benchmarks/``, ``pipelines/``, ``scripts/`` and ``examples/``, maps
each top-level module to the distributions that provide it in this environment, and requires one
of them among the runtime dependencies or an extra. CI runs it in a fresh virtual environment, so
a module that is only present on the machine by chance fails here too.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("lohp_cli", "tests", "benchmarks", "pipelines", "scripts", "examples")
LOCAL = {"lohp_cli", "tests", "benchmarks", "conftest"}


def _load_toml(path: Path) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10 installs tomli (declared)
        import tomli as tomllib
    return tomllib.loads(path.read_text())


def _name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement (``"torch>=2.2"`` → ``torch``)."""
    bare = re.split(r"[\s\[<>=!~;@]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", bare).lower()


def declared() -> set[str]:
    project = _load_toml(ROOT / "pyproject.toml")["project"]
    reqs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    return {_name(r) for r in reqs}


def imported_modules(root: Path = ROOT) -> dict[str, set[str]]:
    """``{top-level module: {files importing it}}`` for third-party modules only."""
    found: dict[str, set[str]] = {}
    for folder in SOURCES:
        for path in sorted((root / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                elif (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "importorskip"
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                ):
                    names = [str(node.args[0].value)]
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in LOCAL:
                        continue
                    found.setdefault(top, set()).add(str(path.relative_to(root)))
    return found


def undeclared(modules: dict[str, set[str]], names: set[str]) -> list[str]:
    """One message per imported module that no declared distribution provides."""
    providers = packages_distributions()
    problems = []
    for module, files in sorted(modules.items()):
        dists = {_name(d) for d in providers.get(module, [])}
        if not dists and _name(module) in names:
            continue  # declared for other interpreters only (e.g. tomli before Python 3.11)
        if not dists:
            problems.append(f"{module} (imported by {sorted(files)[0]}) is not installed")
        elif not dists & names:
            problems.append(f"{module} (from {sorted(dists)}) is imported by {sorted(files)[0]}")
    return problems


def test_every_imported_module_is_declared() -> None:
    modules = imported_modules()
    assert {"torch", "zarr", "typer", "matplotlib", "pytest", "xarray"} <= set(modules)
    assert undeclared(modules, declared()) == []


def test_the_check_catches_an_undeclared_import(tmp_path: Path) -> None:
    (tmp_path / "lohp_cli").mkdir()
    (tmp_path / "lohp_cli" / "plots.py").write_text(
        "import os\nimport numpy as np\nfrom matplotlib import pyplot\nfrom lohp_cli import x\n"
    )
    modules = imported_modules(tmp_path)
    assert set(modules) == {"numpy", "matplotlib"}
    assert undeclared(modules, {"numpy", "matplotlib"}) == []
    (msg,) = undeclared(modules, {"numpy"})
    assert msg.startswith("matplotlib") and "lohp_cli/plots.py" in msg


def test_requirement_names_are_normalised() -> None:
    assert _name("torch>=2.2") == "torch"
    assert _name("tomli>=2.0; python_version < '3.11'") == "tomli"
    assert _name("Scikit_Learn[extra] >= 1.3") == "scikit-learn"
