"""The import graph of the package: a DAG that flows cli -> (api, jobs) -> engine -> evaluation -> model,
data -> config.

Read from the source (every ``import`` statement, also those inside functions), so a lazy import
that would close a cycle or reach upwards fails here too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import fpn

PACKAGE_ROOT = Path(fpn.__file__).parent

# Which top-level parts of fpn each part may import (besides itself). Neutral helpers at the bottom.
NEUTRAL = {"fpn.errors", "fpn.config", "fpn.hardware", "fpn.distributed", "fpn.box_format",
           "fpn.output_comparison", "fpn.visualize", "fpn.safe_reading", "fpn.detections", "fpn.progress"}
ALLOWED = {
    "fpn.errors": set(),
    "fpn.config": {"fpn.errors"},
    "fpn.hardware": {"fpn.errors"},
    "fpn.safe_reading": {"fpn.errors"},
    "fpn.box_format": set(),
    "fpn.progress": set(),
    "fpn.distributed": set(),
    "fpn.output_comparison": set(),
    "fpn.visualize": set(),
    "fpn.detections": {"fpn.box_format", "fpn.visualize"},  # Detections: drawn and written
    "fpn.data": NEUTRAL,
    "fpn.model": NEUTRAL,
    "fpn.interop": NEUTRAL | {"fpn.model"},
    # evaluation: a model over a loader, scored; the model's mask windows, the data side's bad-sample count
    "fpn.evaluation": NEUTRAL | {"fpn.model", "fpn.data"},
    # evaluation: the periodic evaluation and curves.png; interop: train.init's sources
    "fpn.engine": NEUTRAL | {"fpn.model", "fpn.data", "fpn.evaluation", "fpn.interop"},
    "fpn.export": NEUTRAL | {"fpn.model"},
    "fpn.export_openvino": NEUTRAL | {"fpn.model", "fpn.export"},
    # benchmarks (an experiment beside the library): speed and accuracy against torchvision; they
    # build models, batches, the trainer's optimizer, and evaluate runs as the jobs do
    "fpn.bench": NEUTRAL | {"fpn.model", "fpn.data", "fpn.engine", "fpn.interop", "fpn.export", "fpn.api",
                            "fpn.export_openvino",
                            "fpn.jobs"},
    "fpn.api": NEUTRAL | {"fpn.model", "fpn.data", "fpn.engine", "fpn.export_openvino"},
    "fpn.jobs": NEUTRAL | {"fpn.model", "fpn.data", "fpn.engine", "fpn.evaluation", "fpn.api", "fpn.interop",
                           "fpn.export", "fpn.export_openvino"},
    # serve: the API's Detector; the engine's find_checkpoint only, a wrong run path said before it starts
    "fpn.serve": NEUTRAL | {"fpn", "fpn.data", "fpn.api", "fpn.engine"},
    # the reproduction study: an experiment on top of the library, which never imports it
    "fpn.reproduction": NEUTRAL | {"fpn.model", "fpn.data", "fpn.engine", "fpn.evaluation", "fpn.jobs"},
    "fpn.cli": NEUTRAL | {"fpn", "fpn.data", "fpn.engine", "fpn.evaluation", "fpn.api", "fpn.jobs",
                          "fpn.export", "fpn.bench", "fpn.interop", "fpn.serve", "fpn.reproduction"},
    "fpn.__main__": {"fpn.cli"},
    "fpn": set(),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The fpn modules that ``path`` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from fpn.model import boxes`` imports the module fpn.model.boxes
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name.split(".")[0] != "fpn":
                continue
            while name not in known and "." in name:
                name = name.rsplit(".", 1)[0]
            found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE_ROOT.rglob("*.py")}
    known = set(files)
    graph = {}
    for name, path in files.items():
        targets = imports_of(path, known)
        if name.endswith(".__init__") or path.name == "__init__.py":
            graph[name] = {t for t in targets if t != name}
        else:
            # ``import fpn.data.x`` runs fpn.data's __init__ first: not an edge we hold against x
            graph[name] = {t for t in targets if t != name and not name.startswith(t + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a list of nodes, or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def part_of(module: str) -> str:
    for part in sorted(ALLOWED, key=len, reverse=True):
        if module == part or module.startswith(part + "."):
            return part
    raise AssertionError(f"{module}: not in any part of ALLOWED; add it to the layering")


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 30  # every module was read
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_imports_flow_one_way():
    upward = []
    for module, targets in import_graph().items():
        part = part_of(module)
        for target in targets:
            target_part = part_of(target)
            if target_part != part and target_part not in ALLOWED[part]:
                upward.append(f"{module} imports {target}")
    assert not upward, "imports against the layering:\n" + "\n".join(sorted(upward))


def test_the_model_never_imports_the_layers_above():
    for module, targets in import_graph().items():
        if part_of(module) == "fpn.model":
            above = [t for t in targets if part_of(t) in {"fpn.engine", "fpn.evaluation", "fpn.api",
                                                          "fpn.cli", "fpn.jobs", "fpn.data"}]
            assert not above, f"{module} imports {above}"


def test_no_module_re_exports_what_another_defines():
    """Every name is imported from the module that defines it: a package's ``__init__`` holds its
    docstring (``fpn/cli/__init__.py``, the entry, and ``fpn/__init__.py``'s lazy table excepted),
    and no import of an fpn name is kept alive by ``noqa: F401`` for others to import from here."""
    shims = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        lines = path.read_text().splitlines()
        if (path.name == "__init__.py" and path.parent not in (PACKAGE_ROOT, PACKAGE_ROOT / "cli")
                and any(line.startswith(("from ", "import ")) for line in lines)):
            shims.append(f"{path}: imports in a package's __init__")
        shims += [f"{path}: {line.strip()}" for line in lines
                  if line.lstrip().startswith("from fpn") and "noqa: F401" in line]
    assert not shims, "re-exports (import the name from its own module instead):\n" + "\n".join(shims)
