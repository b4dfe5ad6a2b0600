"""The maps of the code cannot drift from the territory: the README's layout tables and the step table
at the top of flows/lifecycle.py are read here and checked against the tree.

- Every path either names must exist (a renamed module fails the suite until its row is fixed).
- Every module of flows/ and tasks/ must be on the README's map: named by its path, or by its file
  name in a row whose path is its folder (`tasks/engine/` ... `training.py`).
- Every package folder of flows/ and tasks/ is in pyproject.toml's package list (an editable install
  finds a missing one anyway; a built wheel would not ship it).
- Every step the lifecycle runs (a Prefect task in flows/steps.py) has a row in the step table, and
  every row's parameter groups are fields of the flow's parameters.
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATH = re.compile(r"`((?:flows|tasks|deployments|bench|docs|tests)/[^`\s]*)`")


def readme_layout_rows() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("|") and not line.startswith("|--")]


def modules() -> list[Path]:
    found = []
    for top in ("flows", "tasks"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if path.name != "__init__.py" and "demo_data" not in path.parts:
                found.append(path.relative_to(ROOT))
    return found


def test_every_path_on_the_readme_map_exists():
    missing = [p for row in readme_layout_rows() for p in PATH.findall(row) if not (ROOT / p.rstrip("/")).exists()]
    assert not missing, f"README's layout names paths that do not exist: {missing}"


def test_every_module_is_on_the_readme_map():
    rows = readme_layout_rows()

    def covered(module: Path) -> bool:
        full, folder = module.as_posix(), module.parent.as_posix() + "/"
        return any(
            f"`{full}`" in row or (f"`{folder}`" in row and f"`{module.name}`" in row.replace(full, "")) for row in rows
        )

    absent = [m.as_posix() for m in modules() if not covered(m)]
    assert not absent, f"modules missing from the README's layout tables: {absent}"


def lifecycle_step_table() -> list[list[str]]:
    doc = ast.get_docstring(ast.parse((ROOT / "flows" / "lifecycle.py").read_text()))
    table = doc.split("Where each step lives", 1)[1].split("\n\n", 2)[1]
    rows = [re.split(r"\s{2,}", line.strip()) for line in table.splitlines()]
    assert rows[0][0] == "step", "the step table lost its header"
    return rows[1:]


def test_the_lifecycle_step_table_names_real_modules_and_every_step():
    from graftline.flows.params import TransferParams

    rows = lifecycle_step_table()
    for step, groups, logic, *_ in rows:
        for name in re.findall(r"[\w/]+\.py", logic):
            assert (ROOT / "tasks" / name).is_file(), f"step table: {step} names tasks/{name}, which does not exist"
        for group in re.findall(r"[a-z_]+", groups.split("(")[0]):
            assert group in TransferParams.model_fields, f"step table: {step} names no parameter group {group!r}"
    tasks = re.findall(r'@task\(name="(\w+)"', (ROOT / "flows" / "steps.py").read_text())
    assert tasks, "flows/steps.py defines no step tasks any more: update this test"
    listed = {row[0] for row in rows}
    assert set(tasks) - listed == set(), f"steps without a row in the lifecycle's table: {set(tasks) - listed}"


def test_every_package_folder_is_installed():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {
        "graftline." + init.parent.relative_to(ROOT).as_posix().replace("/", ".")
        for top in ("flows", "tasks")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert folders - listed == set(), f"packages missing from pyproject.toml: {sorted(folders - listed)}"
