"""dvc.yaml cannot drift from the code: every stage's deps cover the Python it runs, and every
path a stage reads or writes is passed in its `cmd` and declared in its deps or outs, once."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
import yaml

from helpers import ROOT

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
SCRATCH_ARGS = {"--checkpoint"}  # a path the stage deletes once it succeeds: neither dep nor out
PATH_ARGS_EXEMPT = {"--params"}  # DVC's own params file, declared by `params:`
ORDER_DEPS = {"params.ok"}  # a dep only for order (stage `params` runs first); the stage never reads it


def module_file(name: str) -> Path | None:
    """The file of a project module (`dgl.frames.store` -> dgl/frames/store.py), or None outside the project."""
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Project modules that `path` imports anywhere (also inside functions), with their packages."""
    names = set()
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    with_parents = {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 2)}
    return {n for n in with_parents if module_file(n) is not None}


def import_closure(module: str) -> set[Path]:
    """Every project file that running `python -m module` can execute."""
    todo, seen = [module], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(imported_modules(module_file(name)))
    return {module_file(n).relative_to(ROOT) for n in seen}


def covered(path: Path, deps: list[str]) -> bool:
    return any(path == Path(d) or Path(d) in path.parents for d in deps)


def stage_module(stage: dict) -> str:
    argv = shlex.split(stage["cmd"])
    assert argv[:2] == ["python", "-m"], f"cmd runs a module: {stage['cmd']}"
    return argv[2]


def declared_paths(stage: dict) -> set[str]:
    deps = [d for d in stage.get("deps", []) if d not in ORDER_DEPS]
    entries = deps + stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", [])
    return {next(iter(e)) if isinstance(e, dict) else e for e in entries}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_its_import_closure(name):
    stage = STAGES[name]
    closure = import_closure(stage_module(stage))
    assert Path("dgl/settings.py") in closure  # the closure walk itself reaches through packages
    missing = sorted(str(p) for p in closure if not covered(p, stage["deps"]))
    assert not missing, f"stage {name} runs {missing} but dvc.yaml does not list them in its deps"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_data_path_is_passed_in_cmd_and_declared(name):
    stage = STAGES[name]
    argv = shlex.split(stage["cmd"])
    passed = {
        argv[i + 1]
        for i, arg in enumerate(argv[:-1])
        if arg.startswith("--") and arg not in SCRATCH_ARGS | PATH_ARGS_EXEMPT
    }
    declared = declared_paths(stage)
    data = {p for p in declared if not (p.endswith(".py") or p.startswith(("dgl/", "pipelines/")))}
    assert passed == data, f"stage {name}: cmd passes {sorted(passed)}, deps/outs declare {sorted(data)}"


def test_closure_follows_lazy_and_package_imports():
    closure = import_closure("pipelines.train")
    assert Path("dgl/models/methods/vop.py") in closure  # registered by dgl/models/methods/__init__.py
    assert Path("dgl/__init__.py") in closure


def test_reading_params_imports_neither_torch_nor_open_clip():
    closure = import_closure("dgl.settings")
    assert closure == {
        Path("dgl/__init__.py"),
        Path("dgl/settings.py"),
        Path("dgl/typed_yaml.py"),
        Path("dgl/errors.py"),
    }
    for path in closure:
        imports = {
            n.split(".")[0]
            for node in ast.walk(ast.parse((ROOT / path).read_text()))
            for n in (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
        }
        assert not imports & {"torch", "open_clip", "numpy"}, path
