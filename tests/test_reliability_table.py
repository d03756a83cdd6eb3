"""docs/reliability.md's table of faults and bad inputs stays true to the tests: every id in it
is tried by a test (marked ``@pytest.mark.reliability("<id>")``), every such test is in it, and
its "tried" column is the number of cases those tests run (parametrisations counted from the
source, so nothing is imported)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| (r\d\d) \|(?:[^|]*\|){2} (\d+) \|")  # | id | fault | item | tried | ...


def _cases(call: ast.Call, constants: dict[str, ast.AST]) -> int:
    """Number of cases of one ``@pytest.mark.parametrize(names, values)``."""
    values = call.args[1] if len(call.args) > 1 else call.keywords[0].value
    values = constants.get(values.id, values) if isinstance(values, ast.Name) else values
    assert isinstance(values, (ast.List, ast.Tuple)), ast.dump(values)
    return len(values.elts)


def _case_id(test: ast.FunctionDef) -> str | None:
    """The id of ``@pytest.mark.reliability("r02")`` on ``test``, else ``None``."""
    for deco in test.decorator_list:
        if isinstance(deco, ast.Call) and ast.unparse(deco.func).endswith("mark.reliability"):
            return ast.literal_eval(deco.args[0])
    return None


def _tests_by_id() -> dict[str, int]:
    """Cases per id, summed over every test function that carries it."""
    found: dict[str, int] = {}
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        constants = {
            t.id: node.value
            for node in tree.body
            if isinstance(node, ast.Assign)
            for t in node.targets
            if isinstance(t, ast.Name)
        }
        for node in tree.body:
            case = isinstance(node, ast.FunctionDef) and _case_id(node)
            if not case:
                continue
            cases = 1
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and ast.unparse(deco.func).endswith("parametrize"):
                    cases *= _cases(deco, constants)
            found[case] = found.get(case, 0) + cases
    return found


def _table() -> dict[str, int]:
    text = (ROOT / "docs/reliability.md").read_text()
    return {m.group(1): int(m.group(2)) for line in text.splitlines() if (m := ROW.match(line))}


def test_the_table_lists_every_reliability_test_with_its_case_count() -> None:
    tests, table = _tests_by_id(), _table()
    assert len(tests) >= 17
    assert sorted(table) == sorted(tests), "ids in docs/reliability.md != ids of tests"
    wrong = {i: (table[i], tests[i]) for i in tests if table[i] != tests[i]}
    assert not wrong, f"'tried' column (table, tests) disagrees: {wrong}"
