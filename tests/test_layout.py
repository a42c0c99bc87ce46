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


# The layers, lowest first (README, "Layout"): a module may import only its own layer and those
# before it. Every module of the package belongs to one.
LAYERS = ["escnet.errors", "escnet.files", "escnet.machine", "escnet.config", "escnet.data",
          "escnet.transforms", "escnet.models", "escnet.runs", "escnet.reports", "escnet.engine",
          "escnet.deploy", "escnet.serve", "escnet.cli", "escnet.__main__"]


def layer_of(module: str) -> int | None:
    return next((i for i, layer in enumerate(LAYERS) if module == layer or module.startswith(layer + ".")),
                None)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{module} imports {target}" for module, targets in graph.items() for target in targets
                  if layer_of(target) > layer_of(module))


def test_the_folders_follow_the_data_path():
    stages = {p.name for p in SRC.iterdir() if p.is_dir() and not p.name.startswith("_")}
    assert {"data", "transforms", "models", "runs", "engine", "reports", "deploy", "serve"} <= stages


def test_every_module_has_a_layer_and_imports_only_down():
    graph = import_graph()
    unplaced = sorted(m for m in graph if m != "escnet" and layer_of(m) is None)
    assert not unplaced, f"modules in no layer of LAYERS: {unplaced}"
    assert upward_imports(graph) == []


def test_the_layer_check_finds_an_upward_import():
    assert upward_imports({"escnet.runs.rundir": {"escnet.reports.metrics", "escnet.config"},
                           "escnet.config": set()}) == ["escnet.runs.rundir imports escnet.reports.metrics"]


def test_no_module_but_the_cli_prints():
    """The library raises and logs; cli.py talks."""
    allowed = {"escnet.cli"}
    printing = []
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        calls = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Name) and n.func.id == "print"]
        if calls and module not in allowed:
            printing.append(module)
    assert printing == []
