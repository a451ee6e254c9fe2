"""flexai_hook's rooms (docs/architecture.md): no import cycles, and imports only in the allowed
directions. Every import counts, including those inside functions and under TYPE_CHECKING: a
cycle that only type hints close is still two modules that cannot be understood apart.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "flexai_hook"

# a room -> the rooms it may import ("top": the modules directly in flexai_hook/)
ALLOWED = {
    "top": {"top"},
    "placement": {"placement"},
    "devices": {"top", "devices"},
    "oci": {"top", "devices", "oci"},
    "daemon": {"top", "devices", "oci", "placement", "daemon"},
    "engines": {"top", "devices", "oci", "engines"},  # doctor asks oci/driver.py where a card's driver comes from
    "install": {"install"},
    "dra": {"top", "devices", "oci", "dra"},
    "extender": {"top", "placement", "dra", "extender"},
    "admission": {"top", "dra", "admission"},
    "cli": {"top", "devices", "oci", "placement", "daemon", "engines", "install", "dra", "extender", "admission",
            "cli"},
}


def modules(package: Path) -> dict[str, Path]:
    """Dotted names (relative to the package; "" is its __init__) -> files."""
    found = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(package: Path, name: str = "flexai_hook") -> dict[str, set[str]]:
    """Each module's imports of other modules of the package."""
    mods = modules(package)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        here = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        here = [p for p in here if p]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(here[: len(here) - (node.level - 1)] + ([node.module] if node.module else []))
                elif node.module == name or (node.module or "").startswith(name + "."):
                    base = node.module[len(name) + 1:]
                else:
                    continue
                subs = [f"{base}.{a.name}" if base else a.name for a in node.names]
                targets = [s for s in subs if s in mods] or ([base] if base in mods else [])
            elif isinstance(node, ast.Import):
                targets = [a.name[len(name) + 1:] for a in node.names if a.name.startswith(name + ".")]
            graph[mod].update(t for t in targets if t in mods and t != mod)
    return graph


def room(mod: str, graph: dict[str, set[str]]) -> str:
    head = mod.split(".")[0]
    return head if any(m.startswith(head + ".") for m in graph) or head in ALLOWED and head != "top" else "top"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def wrong_way(graph: dict[str, set[str]]) -> list[str]:
    """Imports against ALLOWED, as 'a (room) imports b (room)'."""
    found = []
    for mod, targets in sorted(graph.items()):
        if mod == "":
            continue
        src = room(mod, graph)
        for t in sorted(targets):
            dst = room(t, graph)
            if dst not in ALLOWED.get(src, set()):
                found.append(f"{mod} ({src}) imports {t} ({dst})")
    return found


def test_every_module_is_in_a_room_with_rules():
    graph = imports(PACKAGE)
    rooms = {room(m, graph) for m in graph if m}
    assert rooms <= set(ALLOWED), f"rooms without rules in ALLOWED: {rooms - set(ALLOWED)}"
    for name in ("oci", "daemon", "devices", "cli", "install", "placement", "engines", "extender", "admission"):
        doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text()))
        assert doc and "import" in doc, f"flexai_hook/{name}/__init__.py must say what it owns and may import"


def test_no_import_cycles():
    found = cycles(imports(PACKAGE))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_imports_go_the_documented_way():
    found = wrong_way(imports(PACKAGE))
    assert not found, "imports against docs/architecture.md:\n" + "\n".join(found)


def test_the_checks_catch_a_cycle_and_a_wrong_way_import(tmp_path):
    """The checks themselves can fail: a package whose oci/ imports daemon/, which imports it back."""
    pkg = tmp_path / "flexai_hook"
    for sub in ("oci", "daemon"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "oci" / "spec.py").write_text("def f():\n    from flexai_hook.daemon import service\n")
    (pkg / "daemon" / "service.py").write_text("from ..oci import spec\n")
    graph = imports(pkg)
    assert cycles(graph) == [["daemon.service", "oci.spec"]]
    assert wrong_way(graph) == ["oci.spec (oci) imports daemon.service (daemon)"]


# extender/ may use dra/'s pure parts and its API server client, not the kubelet plugin's
EXTENDER_MAY_USE_OF_DRA = {"dra.claim", "dra.slices", "dra.apiserver"}


def test_the_extender_uses_only_dras_pure_parts_and_its_client():
    graph = imports(PACKAGE)
    used = {t for m, targets in graph.items() if m.startswith("extender") for t in targets if t.startswith("dra")}
    assert used <= EXTENDER_MAY_USE_OF_DRA, f"extender/ imports {sorted(used - EXTENDER_MAY_USE_OF_DRA)}"
    importers = {m for m, targets in graph.items() if any(t.startswith("extender") for t in targets)}
    assert {room(m, graph) for m in importers} <= {"extender", "cli"}, f"only cli/ may import extender/: {importers}"


def test_the_admission_webhook_uses_only_dras_pure_parts_and_its_client():
    graph = imports(PACKAGE)
    used = {t for m, targets in graph.items() if m.startswith("admission") for t in targets if t.startswith("dra")}
    assert used <= EXTENDER_MAY_USE_OF_DRA, f"admission/ imports {sorted(used - EXTENDER_MAY_USE_OF_DRA)}"
    importers = {m for m, targets in graph.items() if any(t.startswith("admission") for t in targets)}
    assert {room(m, graph) for m in importers} <= {"admission", "cli"}, f"only cli/ may import admission/: {importers}"
