"""The package's floors (docs/architecture.md), bottom to top, one direction only.

Parsed with ast, so a violation fails here before it can become an import cycle at run time.
Every import edge counts, the lazy ones inside functions included: a module imports only from a
lower floor or from its own package (the root's bottom modules from each other); no stage imports
another stage; nothing below the stages imports a plug-in (``lohp_cli.l2o``,
``lohp_cli.diffusion``: they register their training methods when a stage or the CLI imports
them); no module-level import cycle exists anywhere in ``lohp_cli/``; no module grows past
``MAX_LINES`` lines and no function past ``MAX_FUNCTION_LINES`` (Typer commands aside).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lohp_cli"
# folder (or root module) -> floor; the package root itself (``__version__``) is the bottom
ROOT_FLOOR = ("errors", "runtime", "timing", "stats", "checkpoint", "cluster", "trainers",
              "metric_log")  # fmt: skip
FLOORS: dict[str, int] = {
    **dict.fromkeys(ROOT_FLOOR, 0),
    "": 0,
    "artifacts": 1,
    "config": 2,
    "tasks": 3,
    "optim": 4,
    "store": 4,
    "policy": 5,
    "methods": 6,
    "diffusion": 6,
    "l2o": 7,
    "report": 7,
    "stages": 8,
    "cli": 9,
    "__main__": 10,
}
STAGE_FLOOR = FLOORS["stages"]
# a stage's own helpers, which only that stage (and its other helpers) imports
STAGE_PARTS = {
    "lohp_cli.stages.runs": "lohp_cli.stages.collect",
    "lohp_cli.stages.collect_schedule": "lohp_cli.stages.collect",
    "lohp_cli.stages.collect_repair": "lohp_cli.stages.collect",
}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _targets(node: ast.AST, modules: set[str]) -> list[str]:
    """The lohp_cli modules an import statement loads (``from pkg import sub`` loads pkg.sub)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith("lohp_cli")]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        if not node.module.startswith("lohp_cli"):
            return []
        subs = [f"{node.module}.{a.name}" for a in node.names]
        return [node.module, *[s for s in subs if s in modules]]
    return []


def import_graph(root: Path = PACKAGE) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """``(module-level edges, all edges)`` between the modules under ``root``."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    modules = set(files)
    top: dict[str, set[str]] = {m: set() for m in modules}
    every: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in files.items():
        tree = ast.parse(path.read_text())
        for node in tree.body:
            top[mod].update(t for t in _targets(node, modules) if t != mod)
        for node in ast.walk(tree):
            every[mod].update(t for t in _targets(node, modules) if t != mod)
    return top, every


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first repeated at the end), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if state.get(n) == 1:
                return [*stack[stack.index(n) :], n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (found := visit(m)):
            return found
    return None


def unit(mod: str) -> str:
    """The folder (or root module) a module belongs to: ``lohp_cli.policy.fit`` -> ``policy``."""
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def floor(mod: str) -> int:
    try:
        return FLOORS[unit(mod)]
    except KeyError:
        raise AssertionError(f"{mod} is on no floor: add its folder to FLOORS") from None


def violations(every: dict[str, set[str]]) -> list[str]:
    """Every import edge that does not go down a floor (or stay in its own package)."""
    out = []
    for mod, deps in sorted(every.items()):
        for dep in sorted(deps):
            a, b = floor(mod), floor(dep)
            same = unit(mod) == unit(dep) or a == b == 0
            own_package = mod.startswith(dep + ".")  # ``from lohp_cli.stages import runs``
            owner = STAGE_PARTS.get(dep)  # a stage's part: its stage and sibling parts import it
            part = owner is not None and owner in (mod, STAGE_PARTS.get(mod))
            if a == b == STAGE_FLOOR and not own_package and not part:
                out.append(f"stage {mod} imports stage {dep}")
            elif b > a or (b == a and not same):
                out.append(f"{mod} (floor {a}) imports {dep} (floor {b})")
    return out


def test_no_module_level_import_cycle() -> None:
    top, _ = import_graph()
    assert find_cycle(top) is None


def test_every_import_goes_down_a_floor() -> None:
    _, every = import_graph()
    assert violations(every) == []


PLUGINS = ("lohp_cli.l2o", "lohp_cli.diffusion")


def plugin_importers(every: dict[str, set[str]]) -> list[str]:
    """Modules below the stages, outside a plug-in package, that import it (only stages and the
    CLI load one)."""
    out = []
    for mod, deps in sorted(every.items()):
        if floor(mod) >= STAGE_FLOOR:
            continue
        for plugin in PLUGINS:
            inside = mod == plugin or mod.startswith(plugin + ".")
            hits = [d for d in deps if d == plugin or d.startswith(plugin + ".")]
            if hits and not inside:
                out.append(f"{mod} imports plug-in {sorted(hits)[0]}")
    return out


def test_the_core_never_imports_a_plugin() -> None:
    _, every = import_graph()
    assert plugin_importers(every) == []


MAX_LINES = 400


def long_modules(root: Path = PACKAGE, limit: int = MAX_LINES) -> list[str]:
    """Modules under ``root`` longer than ``limit`` lines (split one by concern, as config/)."""
    out = []
    for path in sorted(root.rglob("*.py")):
        n = len(path.read_text().splitlines())
        if n > limit:
            out.append(f"{module_name(path, root)}: {n} lines")
    return out


def test_no_module_is_over_400_lines() -> None:
    assert long_modules() == []


MAX_FUNCTION_LINES = 80


def _typer_command(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A Typer command (``@app.command(...)``, ``@command(...)``)."""
    return any(
        isinstance(d, ast.Call) and ast.unparse(d.func).split(".")[-1] == "command"
        for d in node.decorator_list
    )


def long_functions(root: Path = PACKAGE, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """Functions under ``root`` longer than ``limit`` lines; a Typer command's signature (its
    option declarations) is not counted, its body is."""
    out = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            first = node.body[0].lineno if _typer_command(node) else node.lineno
            n = (node.end_lineno or node.lineno) - first + 1
            if n > limit:
                out.append(f"{module_name(path, root)}.{node.name}: {n} lines")
    return out


def test_no_function_is_over_80_lines() -> None:
    assert long_functions() == []


# ---- the checks themselves catch what they should ----------------------------------------------
def write(root: Path, name: str, text: str) -> None:
    path = root / Path(*name.split(".")[1:]).with_suffix(".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    for parent in path.parents:
        if parent == root.parent:
            break
        (parent / "__init__.py").touch()
    path.write_text(text)


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    root = tmp_path / "lohp_cli"
    root.mkdir()
    (root / "__init__.py").touch()
    return root


def test_a_cycle_through_a_submodule_import_is_found(fake: Path) -> None:
    write(fake, "lohp_cli.a", "from lohp_cli.pkg import b\n")
    write(fake, "lohp_cli.pkg.b", "import lohp_cli.c\n")
    write(fake, "lohp_cli.c", "def f():\n    from lohp_cli import a\n")  # lazy: no cycle
    assert find_cycle(import_graph(fake)[0]) is None
    write(fake, "lohp_cli.c", "from lohp_cli.a import x\n")
    assert find_cycle(import_graph(fake)[0]) == ["lohp_cli.a", "lohp_cli.pkg.b", "lohp_cli.c",
                                                 "lohp_cli.a"]  # fmt: skip


def test_stage_to_stage_and_upward_imports_are_found(fake: Path) -> None:
    write(
        fake,
        "lohp_cli.stages.generate",
        "def f():\n    from lohp_cli.stages.train import load_policy\n",
    )
    write(fake, "lohp_cli.stages.train", "from lohp_cli.policy import fit\n")
    write(fake, "lohp_cli.stages.collect", "from lohp_cli.stages import runs\n")  # its own part
    write(fake, "lohp_cli.stages.runs", "from lohp_cli.store import writer\n")
    write(fake, "lohp_cli.stages.collect_repair", "from lohp_cli.stages import runs\n")  # sibling
    write(fake, "lohp_cli.stages.evaluate", "def f():\n    from lohp_cli.stages import runs\n")
    write(fake, "lohp_cli.store.writer", "from lohp_cli import errors\n")
    write(fake, "lohp_cli.errors", "from lohp_cli import runtime\n")  # the root's bottom floor
    write(fake, "lohp_cli.runtime", "")
    write(fake, "lohp_cli.policy.fit", "def g():\n    import lohp_cli.cli\n")
    write(fake, "lohp_cli.cli", "from lohp_cli.stages import train\n")
    _, every = import_graph(fake)
    assert violations(every) == [
        "lohp_cli.policy.fit (floor 5) imports lohp_cli.cli (floor 9)",
        "stage lohp_cli.stages.evaluate imports stage lohp_cli.stages.runs",
        "stage lohp_cli.stages.generate imports stage lohp_cli.stages.train",
    ]


def test_a_lazy_upward_import_fails_the_real_check(fake: Path) -> None:
    """The issue-24 regression: a function-level import from config into the task registry (as
    config/tasks.py once did to validate names) is an upward edge, caught like a top-level one."""
    write(
        fake,
        "lohp_cli.config.tasks",
        "def check(name):\n    from lohp_cli.tasks.models import MODELS\n",
    )
    write(fake, "lohp_cli.tasks.models", "from lohp_cli.config import tasks\n")
    write(fake, "lohp_cli.store.sampler", "from lohp_cli.optim import loop\n")  # same floor
    write(fake, "lohp_cli.optim.loop", "")
    top, every = import_graph(fake)
    assert find_cycle(top) is None  # only the lazy edge closes the circle
    assert violations(every) == [
        "lohp_cli.config.tasks (floor 2) imports lohp_cli.tasks.models (floor 3)",
        "lohp_cli.store.sampler (floor 4) imports lohp_cli.optim (floor 4)",
        "lohp_cli.store.sampler (floor 4) imports lohp_cli.optim.loop (floor 4)",
    ]


def test_a_module_on_no_floor_is_refused(fake: Path) -> None:
    write(fake, "lohp_cli.newpkg.x", "from lohp_cli import errors\n")
    write(fake, "lohp_cli.errors", "")
    with pytest.raises(AssertionError, match="newpkg.x is on no floor"):
        violations(import_graph(fake)[1])


def test_a_core_module_importing_a_plugin_is_found(fake: Path) -> None:
    write(fake, "lohp_cli.l2o.fit", "from lohp_cli.l2o import config\n")
    write(fake, "lohp_cli.l2o.config", "from lohp_cli import config\n")
    write(fake, "lohp_cli.stages.train", "import lohp_cli.l2o\n")  # a stage may load it
    write(fake, "lohp_cli.config", "")
    write(fake, "lohp_cli.policy.fit", "def f():\n    from lohp_cli.l2o.config import X\n")
    _, every = import_graph(fake)
    assert plugin_importers(every) == ["lohp_cli.policy.fit imports plug-in lohp_cli.l2o.config"]


def test_a_long_function_is_found(fake: Path) -> None:
    body = "    x = 1\n" * 3
    write(fake, "lohp_cli.pkg.f", f"def short():\n{body}\n\ndef long():\n{body}    return x\n")
    opts = "    a: int = 1,\n" * 9
    write(fake, "lohp_cli.cli.c", f"@app.command()\ndef cmd(\n{opts}):\n{body}    return x\n")
    assert long_functions(fake, limit=4) == ["lohp_cli.pkg.f.long: 5 lines"]


def test_a_long_module_is_found(fake: Path) -> None:
    write(fake, "lohp_cli.pkg.short", "x = 1\n" * 3)
    write(fake, "lohp_cli.pkg.long", "x = 1\n" * 4)
    assert long_modules(fake, limit=3) == ["lohp_cli.pkg.long: 4 lines"]


# ---- artifacts are read through their typed models (lohp_cli/artifacts) -------------------------
# The modules that own an artifact's metadata: the models themselves and the stores' readers and
# writers. Everywhere else reads ``store.meta``, ``load_policy``'s PolicyMeta and
# ``open_generated``'s GeneratedMeta by attribute; writing attributes (``x.attrs.update``) is fine.
ARTIFACT_OWNERS = (
    "lohp_cli.artifacts",
    "lohp_cli.store.trajectory_store",
    "lohp_cli.store.groups",
    "lohp_cli.store.run_index",
    "lohp_cli.store.writer",
    "lohp_cli.store.blocks",
    "lohp_cli.store.block_runs",
    "lohp_cli.store.run_groups",
    "lohp_cli.store.run_writing",
    "lohp_cli.store.legacy",
    "lohp_cli.store.migrate",
    "lohp_cli.store.generated",
)
POLICY_KEYS = {"train_config", "store_compat", "store_fingerprint", "store_optimizers",
               "normalization", "trained_steps"}  # fmt: skip
# a run's attributes are a RunMeta (lohp_cli.artifacts.run) everywhere but their owners
RUN_KEYS = {"task_id", "replicate", "steps_written", "wall_time_s"}


def _key(node: ast.AST) -> object:
    """The constant key of ``x["key"]`` or ``x.get("key", ...)``, else None."""
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        return node.slice.value
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "get"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    ):
        return node.args[0].value
    return None


def artifact_dict_reads(root: Path = PACKAGE) -> list[str]:
    """Reads of an artifact's metadata as a dict outside the modules that own it: any ``.attrs``
    but ``x.attrs.update(...)``, and a policy config.json key read by subscript or ``.get``."""
    out = []
    for path in sorted(root.rglob("*.py")):
        mod = module_name(path, root)
        if any(mod == o or mod.startswith(o + ".") for o in ARTIFACT_OWNERS):
            continue
        tree = ast.parse(path.read_text())
        writes = {
            id(n.func.value)
            for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == "update"
        }  # fmt: skip
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "attrs" and id(node) not in writes:
                out.append(f"{mod}:{node.lineno} reads .attrs")
            if (key := _key(node)) in POLICY_KEYS:
                out.append(f"{mod}:{node.lineno} reads the policy key {key!r} from a dict")
            elif key in RUN_KEYS:
                out.append(f"{mod}:{node.lineno} reads the run key {key!r} from a dict")
    return out


def test_artifacts_are_read_through_their_models() -> None:
    assert artifact_dict_reads() == []


def test_an_artifact_read_as_a_dict_is_found(fake: Path) -> None:
    write(fake, "lohp_cli.store.trajectory_store", "a = store.root.attrs['x']\n")  # the owner
    write(fake, "lohp_cli.stages.generate", "g.attrs.update({'a': 1})\nn = g.attrs['tasks']\n")
    write(
        fake,
        "lohp_cli.stages.evaluate",
        "k = meta.get('train_config', {})\ns = dict(store.attrs)\n",
    )
    write(fake, "lohp_cli.store.sampler", "t = [a['task_id'] for a in runs]\n")
    assert artifact_dict_reads(fake) == [
        "lohp_cli.stages.evaluate:1 reads the policy key 'train_config' from a dict",
        "lohp_cli.stages.evaluate:2 reads .attrs",
        "lohp_cli.stages.generate:2 reads .attrs",
        "lohp_cli.store.sampler:1 reads the run key 'task_id' from a dict",
    ]
