"""The layers, checked from the source: flows call tasks and never the other way; inside tasks/, each
capability folder imports only from the layers below it (LAYERS); and no two modules import each
other, not even through an import placed inside a function to dodge the cycle."""

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


# The layers of tasks/, lowest first: a module imports only from its own layer and the ones below.
# The registry's contract (tag keys, roles) and its tracking helpers are the vocabulary every step
# logs with, so they sit at the bottom; the registry's versions and promotions re-score and export
# versions, so they sit above evaluation and export. The ONNX pyfuncs' shared body ships inside every
# logged model and imports nothing of graftline, so it sits at the bottom too: its softmax is everyone's.
LAYERS = (
    (
        "foundation",
        # plots: the one way every layer draws, saves and closes a picture
        ("errors", "environment", "progress", "settings", "plots", "registry.contract", "registry.tracking")
        + ("export.onnx_pyfunc", "modality.base"),
    ),
    ("data", ("data",)),
    ("engine", ("engine",)),
    ("evaluate", ("evaluate",)),
    ("export", ("export",)),
    # What varies by modality (tasks/modality/) reads data, builds models, evaluates and exports, and the
    # steps from training up ask it; its light interface (base: the Modality type, the InputPreparer
    # the engine and the export recognise) sits in the foundation.
    ("modality", ("modality",)),
    ("train", ("train",)),
    ("records", ("records",)),
    ("registry", ("registry",)),
    # The ingest step keeps the evaluation sets the registry's promotions read back, so it sits above the
    # registry although it lives with the data it reads.
    ("ingest", ("data.ingest",)),
    ("serve", ("serve",)),
    ("preflight", ("preflight",)),
)
# Settings translate themselves into the engine's config dataclasses (the one translation), imported
# where the translation happens.
ALLOWED_UPWARD = {("settings", "engine.training"), ("settings", "train.self_training")}


def layer_of(module: str) -> int:
    """The index in LAYERS of a graftline.tasks module (its longest matching prefix)."""
    name = module.removeprefix("graftline.tasks.")
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    assert best is not None, f"{module} is in no layer of tests/test_layout.py::LAYERS"
    return best[0]


def test_every_tasks_module_imports_only_its_own_layer_and_below():
    offenders = []
    for name, imports in module_imports().items():
        if not name.startswith("graftline.tasks.") or name == "graftline.tasks":
            continue
        for target in imports:
            if not target.startswith("graftline.tasks.") or _is_package(target):
                continue  # `from graftline.tasks.registry import contract` imports contract, checked on its own
            short = (name.removeprefix("graftline.tasks."), target.removeprefix("graftline.tasks."))
            if layer_of(target) > layer_of(name) and short not in ALLOWED_UPWARD:
                offenders.append(
                    f"{short[0]} ({LAYERS[layer_of(name)][0]}) -> {short[1]} ({LAYERS[layer_of(target)][0]})"
                )
    assert not offenders, "imports reaching up a layer:\n" + "\n".join(sorted(offenders))


def _is_package(module: str) -> bool:
    return (ROOT / "tasks" / module.removeprefix("graftline.tasks.").replace(".", "/")).is_dir()


def test_tasks_has_no_loose_step_modules():
    """Steps live in their capability's folder; the top of tasks/ holds only the shared foundation."""
    top = {p.stem for p in (ROOT / "tasks").glob("*.py")} - {"__init__"}
    assert top <= {"errors", "environment", "progress", "settings", "records", "preflight", "plots"}, sorted(top)


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
