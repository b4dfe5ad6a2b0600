"""The layers, checked from the source: flows call tasks and never the other way; the engine and
the registry never reach up into the steps; and no two modules import each other, not even
through an import placed inside a function to dodge the cycle."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"graftline.flows": ROOT / "flows", "graftline.tasks": ROOT / "tasks"}


def module_imports() -> dict[str, set[str]]:
    """graftline module -> the graftline modules it imports anywhere in its body."""
    graph = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join([package, *parts]).removesuffix(".__init__")
            found = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("graftline."):
                    found.add(node.module)
                    found.update(f"{node.module}.{alias.name}" for alias in node.names)
                elif isinstance(node, ast.Import):
                    found.update(a.name for a in node.names if a.name.startswith("graftline."))
            graph[name] = found
    return {name: {m for m in imports if m in graph and m != name} for name, imports in graph.items()}


def test_tasks_never_import_flows():
    offenders = {
        name: sorted(m for m in imports if m.startswith("graftline.flows"))
        for name, imports in module_imports().items()
        if name.startswith("graftline.tasks")
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_the_engine_and_the_registry_do_not_reach_up_into_the_steps():
    steps = {"data", "validate", "selection", "finetune", "evaluate", "distill", "export"}
    lower = ("graftline.tasks.engine", "graftline.tasks.registry.contract")
    for name, imports in module_imports().items():
        if name.startswith(lower):
            assert not {m for m in imports if m.rsplit(".", 1)[-1] in steps}, name


def test_no_import_cycles():
    graph = module_imports()
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                cycle = path[path.index(target) :] + [target] if target in path else [name, target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
