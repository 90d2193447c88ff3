"""The direction of imports that docs/architecture.md states, checked on the code itself.

Every ``import`` in the package counts: at module level, inside functions, and under
``TYPE_CHECKING`` (a type-only import still ties two modules together for a reader).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import gbmedia

ROOT = Path(gbmedia.__file__).parent

# From the bottom. A package may import its own modules and those of lower layers, never a
# package of its own layer or a higher one. The core modules may import one another.
# The core modules may import one another; the root's modules (the composition root) too.
CORE = {
    "gbmedia",
    "config",
    "db",
    "bus",
    "outbox",
    "metrics",
    "logs",
    "errors",
    "ratelimit",
    "http",
    "wire",
    "jsondepth",
    "turn",
    "loopwatch",
    "waits",
    "orphans",
}
ROOT_MODULES = {"node", "app", "server", "cli", "workers", "__main__"}
LAYERS: list[set[str]] = [
    CORE | {"sfu"},
    {"tenancy"},
    {"messaging"},
    {"rooms"},
    {"recording", "streaming", "bots"},
    {"signaling"},
    {"root"},
]
LAYER_OF = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("gbmedia")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gbmedia") and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from gbmedia.x import module`
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def package_of(module: str) -> str:
    """The package (or core module) a module belongs to; the root's modules form one, ``root``."""
    parts = module.split(".")
    if len(parts) == 1:
        return "gbmedia"  # the package's __init__: its version
    return "root" if parts[1] in ROOT_MODULES else parts[1]


def test_every_package_has_a_layer():
    packages = {package_of(m) for m in graph()}
    missing = packages - set(LAYER_OF)
    assert not missing, f"give these a layer in LAYERS and in docs/architecture.md: {missing}"


def test_imports_point_down():
    wrong = []
    for module, imported in graph().items():
        mine = package_of(module)
        for target in imported:
            theirs = package_of(target)
            if theirs == mine or (mine in CORE and theirs in CORE):
                continue
            if LAYER_OF[theirs] >= LAYER_OF[mine]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_sfu_and_http_are_leaves_of_the_core():
    """The media plane and the HTTP toolkit import only the core (and themselves)."""
    wrong = [
        f"{module} imports {target}"
        for module, imported in graph().items()
        if package_of(module) in ("sfu", "http")
        for target in imported
        if package_of(target) not in CORE | {package_of(module)}
    ]
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles():
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    assert not cycles, cycles


def test_the_checker_sees_function_level_and_type_only_imports(tmp_path: Path):
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from gbmedia.rooms.live import LiveRoom\n"
        "def f():\n    from gbmedia import app\n    import gbmedia.node\n",
        encoding="utf-8",
    )
    assert imports_of(source) == {
        "gbmedia.rooms.live",
        "gbmedia.rooms.live.LiveRoom",
        "gbmedia",
        "gbmedia.app",
        "gbmedia.node",
    }


def test_docs_architecture_names_the_same_layers():
    """docs/architecture.md's table of layers says what LAYERS says."""
    doc = (ROOT.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    documented: dict[int, set[str]] = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].isdigit():
            names = {n.rstrip("/") for n in re.findall(r"`([^`]+)`", cells[1])}
            documented.setdefault(int(cells[0]), set()).update("root" if n in ROOT_MODULES else n for n in names)
    assert documented == {i: layer - {"gbmedia"} for i, layer in enumerate(LAYERS)}
