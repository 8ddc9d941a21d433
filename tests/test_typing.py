"""Type hints stay complete: every public function and method of the modules
that pyproject.toml's mypy override lists as annotated has an annotation on
each parameter and a return annotation. (`make lint` runs mypy itself; this
only keeps the habit from rotting, without running it.)"""

import ast

import pytest
import tomllib

from tests.servers import ROOT

pytestmark = pytest.mark.unit


def _annotated_modules():
    """The modules of the [[tool.mypy.overrides]] with disallow_incomplete_defs."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        overrides = tomllib.load(f)["tool"]["mypy"]["overrides"]
    modules = [
        module
        for override in overrides
        if override.get("disallow_incomplete_defs")
        for module in (
            [override["module"]] if isinstance(override["module"], str) else override["module"]
        )
    ]
    assert modules, "no mypy override with disallow_incomplete_defs in pyproject.toml"
    return modules


def _public(name):
    return not name.startswith("_") or (name.startswith("__") and name.endswith("__"))


def _functions(tree):
    """(qualified name, def, is a method) of the module's public functions and
    of the public methods of its public classes (nested functions are private)."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _public(node.name):
            yield node.name, node, False
        elif isinstance(node, ast.ClassDef) and _public(node.name):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and _public(item.name):
                    yield f"{node.name}.{item.name}", item, True


def _is_static(function):
    return any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in function.decorator_list)


def _missing(function, is_method):
    """What of `function`'s signature has no annotation."""
    args = function.args
    positional = [*args.posonlyargs, *args.args]
    if is_method and not _is_static(function) and positional:
        positional = positional[1:]  # self / cls
    params = [*positional, *args.kwonlyargs, *filter(None, [args.vararg, args.kwarg])]
    missing = [p.arg for p in params if p.annotation is None]
    if function.returns is None:
        missing.append("return")
    return missing


@pytest.mark.parametrize("module", _annotated_modules())
def test_public_functions_are_fully_annotated(module):
    path = ROOT / (module.replace(".", "/") + ".py")
    assert path.exists(), f"{module} (pyproject.toml's mypy override) has no file {path}"
    tree = ast.parse(path.read_text(), filename=str(path))
    incomplete = [
        f"{name} (line {node.lineno}): {', '.join(missing)}"
        for name, node, is_method in _functions(tree)
        if (missing := _missing(node, is_method))
    ]
    assert not incomplete, f"{module}: unannotated " + "; ".join(incomplete)


def test_the_check_notices_a_missing_annotation():
    tree = ast.parse(
        "def f(a: int, b) -> int: ...\n"
        "class C:\n"
        "    def m(self, x: int): ...\n"
        "    @staticmethod\n"
        "    def s(y) -> None: ...\n"
        "    def _private(self, z): ...\n"
        "def _helper(q): ...\n"
    )
    found = {name: _missing(node, is_method) for name, node, is_method in _functions(tree)}
    assert found == {"f": ["b"], "C.m": ["return"], "C.s": ["y"]}
