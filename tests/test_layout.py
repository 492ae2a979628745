"""The package's architecture: imports point one way (no cycle among loopmdm's modules, module-level and
function-local imports both counted), nothing below the command line imports ``loopmdm.cli``, and the layers
of the README's map hold (the torch-only core imports nothing else of loopmdm)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import loopmdm

ROOT = Path(loopmdm.__file__).parent


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """loopmdm modules that ``path`` imports anywhere in its body (relative imports resolved; a name imported
    from a package counts as its submodule when there is one)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(
                    parts[: len(parts) - node.level + 1] + ([node.module] if node.module else [])
                )
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in modules and t != name}
    # importing a package's own __init__ from inside it (re-exports) is not a dependency edge
    return {t for t in out if not name.startswith(t + ".")}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(files)
    return {m: imported_modules(p, modules) for m, p in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                return stack[stack.index(v) :] + [v]
            if not state.get(v) and (cycle := visit(v)):
                return cycle
        stack.pop()
        state[u] = 2
        return None

    for m in sorted(graph):
        if not state.get(m) and (cycle := visit(m)):
            return cycle
    return None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_nothing_below_the_cli_imports_it():
    bad = sorted(
        m
        for m, deps in import_graph().items()
        if not m.startswith("loopmdm.cli")
        and m != "loopmdm"
        and any(d.startswith("loopmdm.cli") for d in deps)
    )
    assert not bad, f"modules below the CLI import it: {bad}"


@pytest.mark.parametrize(
    "package, allowed",
    [
        ("loopmdm.model", ()),  # the torch-only core, exported verbatim as remote code
        # above model, below diffusion; runtime (devices, memory) imports only the model's layers and the errors
        (
            "loopmdm.backbones",
            ("loopmdm.model", "loopmdm.registry", "loopmdm.errors", "loopmdm.runtime"),
        ),
        ("loopmdm.diffusion", ("loopmdm.model", "loopmdm.registry", "loopmdm.errors")),
        (
            "loopmdm.data",
            (
                "loopmdm.model",
                "loopmdm.diffusion",
                "loopmdm.registry",
                "loopmdm.errors",
                "loopmdm.fileio",
            ),
        ),
    ],
)
def test_lower_layers_import_only_lower_layers(package, allowed):
    for m, deps in import_graph().items():
        if m == package or m.startswith(package + "."):
            outside = sorted(
                d for d in deps if not d.startswith(package) and not d.startswith(allowed)
            )
            assert not outside, f"{m} imports {outside}"


def readme_layers() -> tuple[list[str], set[str]]:
    """The folder rows of the README's "Where things are" table, top to bottom, and the modules of its last
    row (the utilities every layer may import)."""
    text = (ROOT.parent.parent / "README.md").read_text()
    table = text.split("## Where things are", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    folders = [r.split("`")[1].rstrip("/") for r in rows if r.split("`")[1].endswith("/")]
    utilities = {c.removesuffix(".py") for c in rows[-1].split("|")[1].split("`")[1::2]}
    return folders, utilities


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward_imports(folders: list[str], utilities: set[str], graph) -> list[str]:
    """Imports from a folder to one at or below it in the README's order (the same folder excepted), or to a
    package the table does not list."""
    rank = {f: i for i, f in enumerate(folders)}
    bad = []
    for m, deps in graph.items():
        a = package_of(m)
        if a not in rank:
            continue
        for d in deps:
            b = package_of(d)
            if b != a and b not in utilities and rank.get(b, len(folders)) >= rank[a]:
                bad.append(f"{m} -> {d}")
    return sorted(bad)


def test_the_readme_map_lists_every_package_in_an_order_the_imports_keep():
    folders, utilities = readme_layers()
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    modules = {p.stem for p in ROOT.glob("*.py") if p.name != "__init__.py"}
    assert set(folders) == packages, "README's map and src/loopmdm/ list different folders"
    assert utilities == modules, "README's last row and the top-level modules differ"
    assert upward_imports(folders, utilities, import_graph()) == []
    # the check sees a wrong order: the same graph against the table with train above eval
    swapped = folders.copy()
    i, j = swapped.index("eval"), swapped.index("train")
    swapped[i], swapped[j] = swapped[j], swapped[i]
    assert any(
        e.startswith("loopmdm.train") for e in upward_imports(swapped, utilities, import_graph())
    )
