"""The core's layering, checked from the source: which sub-package may import which, no cycles.

Every import counts, also the ones inside functions (a lazy import is still a dependency), so a
cycle hidden behind a function-level import fails here too. docs/architecture.md draws the same rules.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "cradle2cane"

# sub-package -> the first-party parts it may import (besides itself). "top" = pipeline.py, photo.py.
ALLOWED = {
    "method": set(),
    "files": {"method"},
    "runtime": set(),
    "loading": {"method", "runtime", "files"},
    "faces": {"files", "method"},
    "top": {"method", "loading", "runtime", "faces", "files"},
    "testing": {"method", "loading", "runtime", "files", "top", "faces"},
    "tools": {"method", "loading", "runtime", "faces", "files", "top", "testing"},
}
COMFY = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "server", "execution", "nodes"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (``from x import y`` gives x and x.y)."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in CORE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (CORE / parts[1]).is_dir()) else "top"


def test_the_core_never_imports_comfyui():
    for path in CORE.rglob("*.py"):
        bad = {m for m in _imports(path) if m.split(".")[0] in COMFY}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_sub_packages_import_only_what_their_layer_allows():
    graph = _graph()
    wrong = []
    for module, targets in graph.items():
        if module in ("cradle2cane", "cradle2cane.__main__"):
            continue  # the package face and `python -m` only hand names on
        part = _part(module)
        for target in targets:
            other = _part(target)
            if target == "cradle2cane" or other == part:
                continue
            if other not in ALLOWED[part]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if nxt == "cradle2cane":
                continue
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node)


MAX_MODULE_LINES = 400
FIRST_PARTY = ("cradle2cane", "nodes", "training")
USER_PLUGINS = {"training/age_model.py"}  # imports the user's own 'package.module:factory' age regressor


def _first_party_files() -> list[Path]:
    return [p for folder in FIRST_PARTY for p in (ROOT / folder).rglob("*.py")] + \
        [ROOT / "__init__.py", ROOT / "install.py"]


def test_first_party_modules_are_imported_by_name():
    """No ``importlib``/``__import__`` for our own modules, and none with a computed name (which could
    be ours): every dependency is visible to readers and to the layering checks above."""
    problems = []
    for path in _first_party_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
            if name not in ("import_module", "__import__"):
                continue
            target = node.args[0] if node.args else None
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if not (isinstance(target, ast.Constant) and isinstance(target.value, str)):
                if path.relative_to(ROOT).as_posix() in USER_PLUGINS:
                    continue
                problems.append(f"{where} imports a computed module name through {name}")
            elif target.value.startswith((".", *FIRST_PARTY)):
                problems.append(f"{where} imports {target.value!r} through {name}")
    assert not problems, "\n".join(problems)


def test_modules_stay_small_enough_to_read():
    """Each module holds one idea: past MAX_MODULE_LINES lines it is time to split it by idea."""
    long = {str(p.relative_to(ROOT)): n for p in _first_party_files()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"
