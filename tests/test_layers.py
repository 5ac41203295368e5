"""The package's import graph: imports flow down the layers of DESIGN.md, never up and never in
a circle, and no trainer imports another trainer. Imports inside functions count too (a lazy import
still ties the two modules together)."""
import ast
from pathlib import Path

import minirlhf

ROOT = Path(minirlhf.__file__).parent
# The algorithm files: each reads on its own and imports only from the layers below it.
# (common.py and rl_run.py are the run skeleton they share; collect.py is data collection.)
TRAINERS = {"pretrain", "sft", "reward", "ppo", "trpo", "grpo", "rloo", "dpo"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in modules:  # minirlhf.x.y -> minirlhf.x when y is a name, not a module
                    t = t.rpartition(".")[0]
                if t and t != name and t != package.partition(".")[0]:
                    edges.add(t)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_circle():
    assert cycles(import_graph()) == []


def test_no_trainer_imports_another_trainer():
    graph = import_graph()
    trainer = lambda m: m.startswith("minirlhf.trainers.") and m.rpartition(".")[2] in TRAINERS  # noqa: E731
    bad = sorted((a, b) for a, edges in graph.items() if trainer(a) for b in edges if trainer(b))
    assert bad == []


def test_objectives_import_torch_only():
    for path in (ROOT / "objectives").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module.split(".")[0] in ("torch", "__future__", "typing", "math", "dataclasses"), (path, node.module)
            if isinstance(node, ast.Import):
                for a in node.names:
                    assert a.name.split(".")[0] in ("torch", "math", "typing"), (path, a.name)


def test_the_checker_sees_a_circle_and_a_trainer_import():
    # the checks above can fail: a made-up graph with both defects
    g = {"minirlhf.a": {"minirlhf.b"}, "minirlhf.b": {"minirlhf.a"}, "minirlhf.c": set()}
    assert cycles(g) == [["minirlhf.a", "minirlhf.b"]]
