"""`make mutants` stays runnable: every planted bug of tests/mutations/catalogue.yaml still
applies to today's src/ (each snippet occurs exactly once), and every test it names exists.

The full run (every mutation of the catalogue; its duration: docs/testing.md) is `make
mutants`; CI runs a sample (`make mutants-sample`) end to end. A refactor that moves a snippet fails here first, naming the
mutation and the snippet, instead of leaving a mutation that silently tests nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "mutations"))

from catalogue import MUTATIONS  # noqa: E402
from run import main  # noqa: E402


def test_every_mutation_applies_to_todays_source(capsys) -> None:
    assert main(["--check"]) == 0, capsys.readouterr().out
    assert f"{len(MUTATIONS)} of {len(MUTATIONS)} mutations apply" in capsys.readouterr().out


def test_every_named_test_file_exists_and_ids_are_unique() -> None:
    ids = [m.id for m in MUTATIONS]
    assert len(ids) == len(set(ids))
    for mutation in MUTATIONS:
        for test in mutation.tests:
            path = HERE.parent / test.split("::")[0]
            assert path.is_file(), f"{mutation.id} names {test}, which does not exist"
