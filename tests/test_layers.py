"""Imports point one way (docs/architecture.md, "Packages and layers"), and only through the namespace.

Every ``import`` of every module is read with ``ast`` (those inside functions too), so a lazy import that
reaches up a layer fails here as much as a top-level one.
"""
import ast
import os
from typing import Iterator, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Subpackage -> layer; modules directly in maskrcnn_tfx/ are the base (0) unless listed.
LAYERS = {"data": 0, "trainer": 1, "components": 1, "serving": 1, "pipelines": 2, "report": 3, "testing": 3,
          "cli": 3, "__main__": 3}
OLD_TOP_LEVEL = ("pipelines", "components", "trainer", "serving")


def _modules() -> Iterator[Tuple[str, str]]:
    """(dotted module name, file path) of every module of the namespace, each file once."""
    roots = [("maskrcnn_tfx", os.path.join(REPO, "maskrcnn_tfx"))]
    roots += [(f"maskrcnn_tfx.{name}", os.path.join(REPO, name)) for name in OLD_TOP_LEVEL]
    for package, root in roots:
        for folder, dirs, files in os.walk(root):
            # The namespace's symlinks point at the top-level folders, walked on their own.
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d)) and d != "__pycache__"]
            relative = os.path.relpath(folder, root)
            prefix = package if relative == "." else package + "." + relative.replace(os.sep, ".")
            for name in files:
                if name.endswith(".py"):
                    yield (prefix if name == "__init__.py" else f"{prefix}.{name[:-3]}"), os.path.join(folder, name)


def _imports(path: str) -> Iterator[Tuple[int, str]]:
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
            for alias in node.names:  # `from maskrcnn_tfx import report` imports the subpackage
                yield node.lineno, f"{node.module}.{alias.name}"


def _part(module: str) -> Optional[str]:
    """The subpackage (or base module) of a maskrcnn_tfx module: 'trainer', 'report', 'label_map', ..."""
    parts = module.split(".")
    if parts[0] != "maskrcnn_tfx" or len(parts) < 2:
        return None
    return parts[1]


def _layer(part: str) -> int:
    return LAYERS.get(part, 0)


def test_the_namespace_has_modules_of_every_layer():
    parts = {_part(module) for module, _ in _modules()}
    assert {"trainer", "components", "serving", "pipelines", "report", "data", "label_map"} <= parts


def test_no_module_imports_a_layer_above_its_own_or_a_sibling_of_its_layer():
    wrong = []
    for module, path in _modules():
        own = _part(module)
        if own is None:
            continue
        for line, imported in _imports(path):
            target = _part(imported)
            if target is None or target == own:
                continue
            up = _layer(target) > _layer(own)
            # trainer, components and serving stand side by side on the base: none needs another.
            sideways = _layer(own) == _layer(target) == 1
            if up or sideways:
                wrong.append(f"{os.path.relpath(path, REPO)}:{line} ({own}, layer {_layer(own)}) imports "
                             f"{imported} ({target}, layer {_layer(target)})")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(wrong)


def test_nothing_imports_the_old_top_level_names():
    old = []
    for directory in ("maskrcnn_tfx", *OLD_TOP_LEVEL, "tests", "benchmarks"):
        for folder, dirs, files in os.walk(os.path.join(REPO, directory)):
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    old += [f"{os.path.relpath(path, REPO)}:{line} imports {imported}"
                            for line, imported in _imports(path) if imported.split(".")[0] in OLD_TOP_LEVEL]
    assert not old, "use the maskrcnn_tfx namespace:\n" + "\n".join(old)


def test_benchmarks_import_no_tests_and_change_no_sys_path():
    """Benchmarks run as ``python -m benchmarks.<name>`` from the repository; what they share with the tests is
    ``maskrcnn_tfx.testing``."""
    wrong = []
    folder = os.path.join(REPO, "benchmarks")
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".py"):
            continue
        path = os.path.join(folder, name)
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", "") == "sys":
                wrong.append(f"benchmarks/{name}:{node.lineno} uses sys.path")
        wrong += [f"benchmarks/{name}:{line} imports {imported}" for line, imported in _imports(path)
                  if imported.split(".")[0] == "tests" or imported.startswith("_") and imported != "__future__"
                  and not imported.startswith("__future__.")]
    assert not wrong, "\n".join(wrong)
