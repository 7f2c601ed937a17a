"""The import graph of bqq/ and kernels/ has no cycle, counting imports inside functions too: a lazy
import that only breaks a cycle at run time still ties the two modules together."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"bqq": ROOT / "bqq", "bqq_kernels": ROOT / "kernels"}


def module_files() -> dict[str, Path]:
    """Module name -> file, for every .py file of the packages (a package is its __init__)."""
    modules = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that module ``name`` imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a package: its deepest known module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imported_modules(name, path, set(files)) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_model_pass_never_imports_integrations():
    graph = import_graph()
    ptq = [name for name in graph if name == "bqq.ptq" or name.startswith("bqq.ptq.")]
    assert ptq
    for name in ptq:
        assert not {t for t in graph[name] if t == "bqq.hf" or t.startswith("bqq.hf.")}, name


def test_the_checker_finds_a_cycle_and_a_lazy_import(tmp_path):
    module = tmp_path / "a.py"
    module.write_text("def f():\n    from .b import g\n")
    assert imported_modules("pkg.a", module, {"pkg.a", "pkg.b"}) == {"pkg.b"}
    assert cycles({"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": set()}) == [["pkg.a", "pkg.b"]]


@pytest.mark.parametrize("package", ["bqq", "bqq_kernels"])
def test_every_module_is_seen(package):
    assert any(name.startswith(package + ".") for name in import_graph())
