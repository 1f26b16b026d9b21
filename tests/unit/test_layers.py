"""The package's layers (docs/architecture.md): core ← stages ← cli, one direction only.

Parsed with ast, so a violation fails here before it can become an import cycle at run time:
no stage imports another stage, the core imports neither stages nor the CLI nor a plug-in
(``lohp_cli.l2o``, ``lohp_cli.diffusion``: they register their training methods when a stage or
the CLI imports them),
no module-level import cycle exists anywhere in ``lohp_cli/``, and no module there grows past
``MAX_LINES`` lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lohp_cli"
STAGES = {
    "lohp_cli.collect",
    "lohp_cli.train",
    "lohp_cli.generate",
    "lohp_cli.evaluate",
    "lohp_cli.l2o.evaluate",
    "lohp_cli.export",
    "lohp_cli.predict",
}
CLI = "lohp_cli.cli"
ENTRY = {"lohp_cli.__main__"}


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


def layer(mod: str) -> str:
    if mod == CLI or mod.startswith(CLI + ".") or mod in ENTRY:
        return "cli"
    return "stage" if mod in STAGES else "core"


def violations(every: dict[str, set[str]]) -> list[str]:
    out = []
    rank = {"core": 0, "stage": 1, "cli": 2}
    for mod, deps in sorted(every.items()):
        for dep in sorted(deps):
            a, b = layer(mod), layer(dep)
            if a == b == "stage":
                out.append(f"stage {mod} imports stage {dep}")
            elif rank[b] > rank[a]:
                out.append(f"{a} {mod} imports {b} {dep}")
    return out


def test_no_module_level_import_cycle() -> None:
    top, _ = import_graph()
    assert find_cycle(top) is None


def test_layers_import_downwards_only() -> None:
    _, every = import_graph()
    assert STAGES <= set(every), "a stage module moved: update STAGES and docs/architecture.md"
    assert violations(every) == []


PLUGINS = ("lohp_cli.l2o", "lohp_cli.diffusion")


def plugin_importers(every: dict[str, set[str]]) -> list[str]:
    """Core modules outside a plug-in package that import it (only stages and the CLI load one)."""
    out = []
    for mod, deps in sorted(every.items()):
        if layer(mod) != "core":
            continue
        for plugin in PLUGINS:
            inside = mod == plugin or mod.startswith(plugin + ".")
            hits = [d for d in deps if d == plugin or d.startswith(plugin + ".")]
            if hits and not inside:
                out.append(f"core {mod} imports plug-in {sorted(hits)[0]}")
    return out


def test_the_core_never_imports_a_plugin() -> None:
    _, every = import_graph()
    assert plugin_importers(every) == []


MAX_LINES = 450


def long_modules(root: Path = PACKAGE, limit: int = MAX_LINES) -> list[str]:
    """Modules under ``root`` longer than ``limit`` lines (split one by concern, as config/)."""
    out = []
    for path in sorted(root.rglob("*.py")):
        n = len(path.read_text().splitlines())
        if n > limit:
            out.append(f"{module_name(path, root)}: {n} lines")
    return out


def test_no_module_is_much_over_400_lines() -> None:
    assert long_modules() == []


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
    write(fake, "lohp_cli.generate", "def f():\n    from lohp_cli.train import load_policy\n")
    write(fake, "lohp_cli.train", "from lohp_cli.policy import fit\n")
    write(fake, "lohp_cli.policy.fit", "def g():\n    import lohp_cli.cli\n")
    write(fake, "lohp_cli.cli", "from lohp_cli import train\n")
    _, every = import_graph(fake)
    assert violations(every) == [
        "stage lohp_cli.generate imports stage lohp_cli.train",
        "core lohp_cli.policy.fit imports cli lohp_cli.cli",
    ]


def test_a_core_module_importing_a_plugin_is_found(fake: Path) -> None:
    write(fake, "lohp_cli.l2o.fit", "from lohp_cli.l2o import config\n")
    write(fake, "lohp_cli.l2o.config", "from lohp_cli import config\n")
    write(fake, "lohp_cli.train", "import lohp_cli.l2o\n")  # a stage may load it
    write(fake, "lohp_cli.config", "")
    write(fake, "lohp_cli.policy.fit", "def f():\n    from lohp_cli.l2o.config import X\n")
    _, every = import_graph(fake)
    assert plugin_importers(every) == [
        "core lohp_cli.policy.fit imports plug-in lohp_cli.l2o.config"
    ]


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
    write(fake, "lohp_cli.generate", "g.attrs.update({'a': 1})\nn = g.attrs['tasks']\n")
    write(fake, "lohp_cli.evaluate", "k = meta.get('train_config', {})\ns = dict(store.attrs)\n")
    write(fake, "lohp_cli.store.sampler", "t = [a['task_id'] for a in runs]\n")
    assert artifact_dict_reads(fake) == [
        "lohp_cli.evaluate:1 reads the policy key 'train_config' from a dict",
        "lohp_cli.evaluate:2 reads .attrs",
        "lohp_cli.generate:2 reads .attrs",
        "lohp_cli.store.sampler:1 reads the run key 'task_id' from a dict",
    ]
