"""No import circles among bench/ modules (static AST graph, so circles cannot come back).

Every ``import`` / ``from ... import`` counts, also the ones inside functions (a lazy import still ties
the two floors together); only ``if TYPE_CHECKING:`` blocks are left out (they never run). An edge goes
to the module named and, for ``from pkg import name``, to ``pkg.name`` when that is a module.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def module_files(package: str = "bench") -> dict[str, Path]:
    out = {}
    for p in sorted((ROOT / package).rglob("*.py")):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(path: Path, module: str) -> set[str]:
    """Dotted names ``path`` imports (absolute; relative imports resolved against ``module``)."""
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return names


def import_graph(package: str = "bench") -> dict[str, set[str]]:
    files = module_files(package)
    return {m: {n for n in imported_names(p, m) if n in files and n != m} for m, p in files.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative), each as a loop path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        comps.append(_loop(graph, set(comp)))
    return comps


def _loop(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """One concrete circle a -> b -> ... -> a inside a strongly connected component (for the message)."""
    start = min(comp)
    prev = {start: None}
    frontier = [start]
    while frontier:                      # breadth-first back to start through the component
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return [*reversed(path), start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return sorted(comp)


def test_cycle_finder_sees_direct_and_lazy_circles(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    src = tmp_path / "m.py"
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from bench.x import Y\n"
                   "def f():\n    from bench.z import w\n    import bench.q\nfrom . import sib\n")
    assert imported_names(src, "bench.pkg.m") == {"typing", "typing.TYPE_CHECKING", "bench.z", "bench.z.w",
                                                  "bench.q", "bench.pkg", "bench.pkg.sib"}


def test_bench_has_no_import_cycles():
    graph = import_graph("bench")
    assert len(graph) > 50                # the walk found the package
    cycles = find_cycles(graph)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("low, high", [
    ("bench.method", "bench.compute"),            # the interface does not import FLOP counting
    ("bench.method", "bench.flops"),
    ("bench.data.registry", "bench.data.spec"),   # readers register below the spec that builds them
    ("bench.metrics.assets", "bench.consistency.latents"),
])
def test_floors(low, high):
    graph = import_graph("bench")
    seen, todo = set(), [low]
    while todo:                                    # everything ``low`` reaches, transitively
        v = todo.pop()
        for w in graph.get(v, ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    assert high not in seen, f"{low} reaches {high}"
