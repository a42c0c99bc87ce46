"""The package's structure: no import cycles, and each stage in its own folder."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "escnet"


def import_graph() -> dict[str, set[str]]:
    """``module → escnet modules it imports`` (imports inside functions count too); a module
    importing its own package is left out (that is how a submodule is reached)."""
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def owner(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                target = owner(name)
                if target.startswith("escnet") and target != module and not module.startswith(target + "."):
                    graph[module].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_no_import_cycles_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# The layers (README, "Layout"): a common base, lowest first, then two wings over it, training
# (reports, engine) and runtime (deploy, archive, serve), then the command line. A module may import the
# base up to its own layer (any of it, from a wing), its own wing up to its own layer, and
# nothing of the other wing; only the command line imports both. The root package is the lowest
# layer: it imports nothing of escnet at module level (its names load on first use).
BASE = ["escnet", "escnet.errors", "escnet.files", "escnet.figures", "escnet.machine", "escnet.cards",
        "escnet.config",
        "escnet.data", "escnet.transforms", "escnet.models", "escnet.runs"]
WINGS = {"training": ["escnet.reports", "escnet.engine"],
         "runtime": ["escnet.deploy", "escnet.archive", "escnet.serve"]}
TOP = ["escnet.cli", "escnet.__main__"]


def place(module: str) -> tuple[str, int] | None:
    """``(part, rank)``: the part of the package a module belongs to (``base``, a wing, ``top``)
    and its layer's rank there; ``None`` for a module in no layer."""
    def rank(layers: list[str]) -> int | None:
        found = [i for i, layer in enumerate(layers) if module == layer or
                 (layer != "escnet" and module.startswith(layer + "."))]
        return found[-1] if found else None

    for part, layers in (("base", BASE), *WINGS.items(), ("top", TOP)):
        if (r := rank(layers)) is not None:
            return part, r
    return None


def forbidden_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports that break the layers, each said as the rule it breaks."""
    out = []
    for module, targets in sorted(graph.items()):
        here = place(module)
        for target in sorted(targets):
            there = place(target)
            if here is None or there is None:
                continue
            (part, rank), (other, other_rank) = here, there
            if other == "base":
                ok = part != "base" or other_rank <= rank
            else:
                ok = part == "top" or (other == part and other_rank <= rank)
            if not ok:
                why = (f"the {part} wing never imports the {other} wing" if {part, other} == set(WINGS)
                       else f"{part} layer {module.split('.')[1] if '.' in module else 'escnet'} may not "
                            f"import the later {other} layer")
                out.append(f"{module} imports {target}: {why}")
    return out


def test_the_folders_follow_the_data_path():
    stages = {p.name for p in SRC.iterdir() if p.is_dir() and not p.name.startswith("_")}
    assert {"data", "transforms", "models", "runs", "engine", "reports", "deploy", "serve"} <= stages


def test_every_module_has_a_layer_and_imports_only_down_its_own_wing():
    graph = import_graph()
    unplaced = sorted(m for m in graph if place(m) is None)
    assert not unplaced, f"modules in no layer (add them to BASE, WINGS or TOP): {unplaced}"
    assert forbidden_imports(graph) == []


def test_the_layer_check_finds_upward_and_cross_wing_imports_and_the_root_package():
    found = forbidden_imports({"escnet.runs.rundir": {"escnet.reports.metrics", "escnet.config"},
                               "escnet.deploy.embed": {"escnet.engine.data", "escnet.runs", "escnet.serve.app"},
                               "escnet.engine.train": {"escnet.deploy.predict"},
                               "escnet": {"escnet.config"},
                               "escnet.cli.training": {"escnet.engine.train", "escnet.deploy.predict"},
                               "escnet.config": set()})
    assert found == [
        "escnet imports escnet.config: base layer escnet may not import the later base layer",
        "escnet.deploy.embed imports escnet.engine.data: the runtime wing never imports the training wing",
        "escnet.deploy.embed imports escnet.serve.app: runtime layer deploy may not import the later "
        "runtime layer",
        "escnet.engine.train imports escnet.deploy.predict: the training wing never imports the runtime wing",
        "escnet.runs.rundir imports escnet.reports.metrics: base layer runs may not import the later "
        "training layer"]


def test_no_module_but_the_cli_prints():
    """The library raises and logs; cli.py talks."""
    printing = []
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        calls = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Name) and n.func.id == "print"]
        if calls and not (module == "escnet.cli" or module.startswith("escnet.cli.")):
            printing.append(module)
    assert printing == []
