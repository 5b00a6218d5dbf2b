"""Layers point one way: every import of every module under ext5/ (and tasks/, installed as ext5.tasks),
module-level or inside a function, goes to the module's own package or to a lower layer.

    cli edge     ext5.cli, ext5.config, ext5.commands, ext5.experiments   flags, gin, subcommands, studies
    eval|interop ext5.eval, ext5.interop                                   evaluation; HF / t5x conversion
    train        ext5.train                                                mesh, step, trainer, checkpoints
    tasks        ext5.tasks (tasks/)                                       seqio task and mixture registrations
    data         ext5.data                                                 tokenize, mix, pack, pipelines
    model        ext5.model, ext5.errors                                   network, losses, decoding, scoring,
                                                                           FLOPs, sharding rules; error types

Packages in one layer do not import each other (eval and interop are peers), except in the open layers
(model: `ext5.errors` is a leaf; the cli edge dispatches among its subcommands). docs/architecture.md draws
the same map. Also: only the cli edge imports gin, and model, train and interop import no TensorFlow.
"""
from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = {"ext5": os.path.join(ROOT, "ext5"), "ext5.tasks": os.path.join(ROOT, "tasks")}

# (layer name, packages, whether packages of this layer may import each other), bottom first.
LAYERS = [
    ("model", ("ext5.model", "ext5.errors"), True),
    ("data", ("ext5.data",), False),
    ("tasks", ("ext5.tasks",), False),
    ("train", ("ext5.train",), False),
    ("eval|interop", ("ext5.eval", "ext5.interop"), False),
    ("cli edge", ("ext5.cli", "ext5.config", "ext5.commands", "ext5.experiments", "ext5.gin", "ext5"), True),
]
CLI_EDGE = LAYERS[-1][1]
NO_TENSORFLOW = ("ext5.model", "ext5.train", "ext5.interop")


def _package(module: str) -> str:
    """The layered package a module belongs to: the longest LAYERS entry that is it or a parent of it."""
    names = [p for _, pkgs, _ in LAYERS for p in pkgs if module == p or module.startswith(p + ".")]
    if not names:
        raise AssertionError(f"{module} is in no layer; add its package to LAYERS in tests/test_layering.py "
                             f"(and to docs/architecture.md)")
    return max(names, key=len)


def _layer(package: str) -> tuple[int, bool]:
    for rank, (_, pkgs, open_layer) in enumerate(LAYERS):
        if package in pkgs:
            return rank, open_layer
    raise AssertionError(package)


def _modules() -> dict[str, str]:
    """{module name: file} of every .py file under the sources."""
    out = {}
    for prefix, root in SOURCES.items():
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for f in filenames:
                if not f.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, f), root)[:-3].replace(os.sep, ".")
                rel = rel[: -len("__init__")].rstrip(".") if rel.endswith("__init__") else rel
                if prefix == "ext5" and (rel == "tasks" or rel.startswith("tasks.")):
                    continue  # tasks/ is ext5.tasks; an ext5/tasks folder would be a mistake caught elsewhere
                out[f"{prefix}.{rel}" if rel else prefix] = os.path.join(dirpath, f)
    return out


def _imports(module: str, path: str) -> list[tuple[str, int]]:
    """(imported module, line) for every import statement in the file, at any depth, relative ones resolved;
    `from pkg import name` yields `pkg.name` (a submodule or an attribute: either belongs to pkg's layer), and
    `importlib.import_module("literal")` counts too."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    is_package = path.endswith("__init__.py")
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                base = parts if is_package else parts[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out += [(f"{target}.{a.name}", node.lineno) for a in node.names if a.name != "*"]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.append((node.args[0].value, node.lineno))
    return out


def _violations() -> list[str]:
    bad = []
    for module, path in sorted(_modules().items()):
        src_pkg = _package(module)
        src_rank, open_layer = _layer(src_pkg)
        where = os.path.relpath(path, ROOT)
        for target, line in _imports(module, path):
            top = target.split(".")[0]
            if top == "gin" and src_pkg not in CLI_EDGE:
                bad.append(f"{where}:{line}: {module} imports gin; only the cli edge ({', '.join(CLI_EDGE)}) does")
            if top == "tensorflow" and src_pkg in NO_TENSORFLOW:
                bad.append(f"{where}:{line}: {module} imports tensorflow; {src_pkg} stays TensorFlow-free")
            if top != "ext5":
                continue
            dst_pkg = _package(target)
            if dst_pkg == src_pkg:
                continue
            dst_rank, _ = _layer(dst_pkg)
            if dst_rank > src_rank or (dst_rank == src_rank and not open_layer):
                bad.append(f"{where}:{line}: {module} ({LAYERS[src_rank][0]}) imports {target} "
                           f"({LAYERS[dst_rank][0]})")
    return bad


def test_layers_point_one_way():
    bad = _violations()
    assert not bad, "imports against the layering (a module may import its own package and lower layers):\n" + \
        "\n".join(bad)


def test_the_check_sees_lazy_relative_and_dynamic_imports(tmp_path):
    """The parser finds function-level, relative and importlib imports (a check that cannot fail is no check)."""
    path = tmp_path / "decoding.py"
    path.write_text("import numpy\n"
                    "def f():\n"
                    "    from ext5.train.partitioning import standard_logical_axis_rules\n"
                    "    from ..eval import run\n"
                    "    from . import t5\n"
                    "    importlib.import_module('ext5.interop.hf')\n")
    found = [t for t, _ in _imports("ext5.model.decoding", str(path))]
    assert found == ["numpy", "ext5.train.partitioning.standard_logical_axis_rules", "ext5.eval.run",
                     "ext5.model.t5", "ext5.interop.hf"]
    ranks = {t: _layer(_package(t))[0] for t in found[1:]}
    assert ranks["ext5.model.t5"] == 0 < ranks["ext5.train.partitioning.standard_logical_axis_rules"] \
        < ranks["ext5.eval.run"] == ranks["ext5.interop.hf"]


def test_every_module_has_a_layer():
    modules = _modules()
    assert "ext5.model.t5" in modules and "ext5.tasks" in modules and "ext5.interop.hf" in modules
    for module in modules:
        _package(module)


@pytest.mark.parametrize("module", ["ext5.model.decoding", "ext5.model.scoring", "ext5.model.sharding"])
def test_model_layer_imports_nothing_above_it(module):
    """The issue's two offenders, by name: decoding took its rules from train.partitioning."""
    path = _modules()[module]
    above = [t for t, _ in _imports(module, path) if t.startswith("ext5.") and _layer(_package(t))[0] > 0]
    assert not above, above
