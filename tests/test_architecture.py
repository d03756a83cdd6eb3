"""The package's layout keeps its promises (docs/architecture.md): every import goes down the
floors the document draws (or back within a package's listed order), the module list is the code
as it is, no cycle, nothing outside ``sanet/cli/`` imports the CLI, no module imports another's
private helper, files stay short, and the public API works right after ``import sanet``."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "sanet"
MAX_LINES = 420  # a file past ~400 lines is split by concept (docs/architecture.md)
MAX_FUNCTION_LINES = 60  # a function past it is split (docs/architecture.md)
DOC = SRC.parent / "docs" / "architecture.md"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(name: str) -> str | None:
    """The sanet module an import of ``name`` loads (a module, else its package)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> list[tuple[str, list[str], int]]:
    """``(target module, imported names, line)`` for every sanet import in ``module``,
    including imports inside functions (a lazy import still closes a cycle)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "sanet":
                    found.append((alias.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != "sanet":
                continue
            for alias in node.names:  # `from sanet.cli import train` imports a submodule
                sub = f"{base}.{alias.name}"
                found.append(
                    (sub, [], node.lineno) if sub in MODULES else (base, [alias.name], node.lineno)
                )
    return [(_resolve(t), names, line) for t, names, line in found if _resolve(t)]


def _graph() -> dict[str, set[str]]:
    return {m: {t for t, _, _ in _imports(m) if t != m} for m in MODULES}


def _doc_floors() -> dict[str, int]:
    """``{"sanet/models/": 3, "sanet/losses.py": 2, ...}`` from the floors table of the doc."""
    floors = {}
    for line in DOC.read_text().split("## Floors", 1)[1].split("\n## ", 1)[0].splitlines():
        row = re.match(r"\|\s*(\d+)\s*\|(.*?)\|", line)
        if row:
            for place in re.findall(r"`(sanet/[^`]*)`", row.group(2)):
                floors[place] = int(row.group(1))
    return floors


def _doc_modules() -> list[str]:
    """Module paths (relative to ``sanet/``) in the order of the doc's module list."""
    section = DOC.read_text().split("## Modules", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^- `([\w/]+\.py)`", section, flags=re.M)


def _rel(module: str) -> str:
    return str(MODULES[module].relative_to(PACKAGE))


def _package(module: str) -> str:
    """``sanet.models`` for ``sanet.models.heads``; a top-level module is its own package."""
    rel = _rel(module)
    return rel.split("/")[0] if "/" in rel else rel


def _floor(module: str, floors: dict[str, int]) -> int:
    rel = f"sanet/{_rel(module)}"
    places = [p for p in floors if rel == p or (p.endswith("/") and rel.startswith(p))]
    assert places, f"{rel} is on no floor of docs/architecture.md"
    return floors[max(places, key=len)]


def test_imports_go_down_the_floors_of_the_document() -> None:
    floors, order = _doc_floors(), _doc_modules()
    assert floors and order, "docs/architecture.md lost its floors table or module list"
    offenders = []
    for module in MODULES:
        for target, _, line in _imports(module):
            if target == module:
                continue
            here, there = _floor(module, floors), _floor(target, floors)
            if _package(module) == _package(target) and "/" in _rel(module):
                if order.index(_rel(target)) > order.index(_rel(module)):
                    offenders.append(
                        f"{_rel(module)}:{line} imports {_rel(target)}, listed after it"
                    )
            elif there >= here:
                offenders.append(
                    f"{_rel(module)}:{line} (floor {here}) imports {_rel(target)} (floor {there})"
                )
    assert not offenders, "imports against docs/architecture.md:\n" + "\n".join(offenders)


def test_the_floor_check_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    real = _imports
    extra = {"sanet.metrics": ("sanet.inference.predictor", [], 1)}  # floor 2 → floor 4
    monkeypatch.setattr(
        sys.modules[__name__], "_imports", lambda m: [*real(m), *([extra[m]] if m in extra else [])]
    )
    with pytest.raises(AssertionError, match=r"metrics\.py:1 \(floor 2\) imports inference"):
        test_imports_go_down_the_floors_of_the_document()


def test_the_document_lists_every_module_as_it_is() -> None:
    listed, actual = _doc_modules(), sorted(_rel(m) for m in MODULES)
    assert len(listed) == len(set(listed)), "a module is listed twice"
    assert sorted(listed) == actual, (
        f"missing from docs/architecture.md: {sorted(set(actual) - set(listed))}; "
        f"listed but gone: {sorted(set(listed) - set(actual))}"
    )


def test_import_graph_has_no_cycle() -> None:
    graph, state, stack = _graph(), {}, []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    real = _graph()
    real["sanet.metrics"] = {*real["sanet.metrics"], "sanet.inference.predictor"}
    monkeypatch.setattr(sys.modules[__name__], "_graph", lambda: real)
    with pytest.raises(AssertionError, match="import cycles"):
        test_import_graph_has_no_cycle()


def test_only_the_cli_imports_the_cli() -> None:
    offenders = [
        f"{m} imports {t} (line {line})"
        for m in MODULES
        if not m.startswith("sanet.cli")
        for t, _, line in _imports(m)
        if t.startswith("sanet.cli")
    ]
    assert not offenders, offenders


def test_no_private_helper_is_imported_across_modules() -> None:
    offenders = [
        f"{m} imports {name} from {t} (line {line})"
        for m in MODULES
        for t, names, line in _imports(m)
        for name in names
        if name.startswith("_") and not name.startswith("__") and t != m
    ]
    assert not offenders, offenders


def test_no_file_is_too_long() -> None:
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by concept (STYLE.md): {long}"


def _long_functions() -> dict[str, int]:
    """``{"module:function": lines}`` of every function (method, nested function) in src/sanet
    longer than :data:`MAX_FUNCTION_LINES`, decorators excluded, docstring included."""
    found = {}
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found[f"{module}:{node.name}"] = lines
    return found


def test_no_function_is_too_long() -> None:
    long = _long_functions()
    assert not long, (
        f"split these (docs/architecture.md: at most {MAX_FUNCTION_LINES} lines): {long}"
    )


def test_the_function_length_check_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "MAX_FUNCTION_LINES", 5)
    assert "sanet.api.evaluation:evaluate" in _long_functions()


def test_public_api_works_right_after_import_sanet(tmp_path: Path) -> None:
    # A fresh interpreter that imports nothing but `sanet` first.
    code = f"""
import sanet
ds = sanet.data.build_dataset("synthetic", None, split="val", num_images=2, size=48)
image, mask = ds[0]
cm = sanet.metrics.ConfusionMatrix(ds.num_classes)
cm.update(mask[None], mask[None])
assert cm.compute()["pixAcc"] == 1.0
model = sanet.build_model("fcn", backbone="resnet18d", num_classes=ds.num_classes)
model.save_pretrained({str(tmp_path / "run" / "model")!r}, metadata={{"class_names": ds.class_names}})
loaded, meta = sanet.load_model({str(tmp_path / "run")!r})
assert meta["class_names"] == ds.class_names and loaded.name == "fcn"
assert sanet.Predictor({str(tmp_path / "run")!r}).predict(image).shape == (48, 48)
print("ok", sorted(sanet.list_models()))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok ['fcn', 'sanet', 'sanet_se']")
