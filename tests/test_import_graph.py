"""The layers import downwards only: advisor -> plugins -> trainer -> core (src/babeltune), advisor -> trainer,
everything -> core, and never back (read from the source with ast, so lazy imports inside functions count)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"advisor": ROOT / "advisor", "trainer": ROOT / "trainer", "plugins": ROOT / "plugins",
          "core": ROOT / "src" / "babeltune"}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "babeltune":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in ("advisor", "trainer", "plugins", "lang_profiles") else "core"


def imported_modules(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def layer_edges() -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = {}
    for layer, folder in LAYERS.items():
        for path in sorted(folder.rglob("*.py")):
            for line, module in imported_modules(path):
                target = layer_of(module)
                if target and target not in (layer, "lang_profiles"):
                    edges.setdefault((layer, target), []).append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return edges


def find_cycle(edges) -> list[str] | None:
    graph: dict[str, set[str]] = {}
    for source, target in edges:
        graph.setdefault(source, set()).add(target)

    def visit(node, path):
        if node in path:
            return path[path.index(node):] + [node]
        for nxt in sorted(graph.get(node, ())):
            cycle = visit(nxt, path + [node])
            if cycle:
                return cycle
        return None

    return next((cycle for start in sorted(graph) if (cycle := visit(start, []))), None)


def test_the_layers_import_without_a_cycle():
    edges = layer_edges()
    cycle = find_cycle(edges)
    assert cycle is None, " -> ".join(cycle) + "\n" + "\n".join(
        line for a, b in zip(cycle, cycle[1:]) for line in edges[(a, b)])


def test_trainer_and_core_do_not_import_the_advisor_and_core_imports_no_layer():
    edges = layer_edges()
    assert ("trainer", "advisor") not in edges, "\n".join(edges[("trainer", "advisor")])
    assert ("trainer", "plugins") not in edges, "\n".join(edges[("trainer", "plugins")])
    core_out = [line for (source, _), lines in edges.items() if source == "core" for line in lines]
    assert core_out == [], "\n".join(core_out)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({("trainer", "advisor"): [], ("advisor", "trainer"): []}) == ["advisor", "trainer", "advisor"]
    assert find_cycle({("advisor", "trainer"): [], ("trainer", "core"): []}) is None


def test_the_old_toolkit_name_still_imports():
    from babeltune.plugins import common, toolkit

    assert common.choose_attention is toolkit.choose_attention and common.load_base_model is toolkit.load_base_model
