"""Reads ``catalogue.yaml``: the bugs `make mutants` plants and the tests that must catch each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

CATALOGUE = Path(__file__).with_name("catalogue.yaml")


@dataclass(frozen=True)
class Mutation:
    id: str
    area: str
    file: str  # relative to src/ (e.g. "sanet/models/sa.py")
    edits: tuple[tuple[str, str], ...]  # (find, replace) pairs, each find unique in the file
    tests: tuple[str, ...]  # relative to the repository root (e.g. "tests/test_sa.py")
    description: str


def load(path: Path = CATALOGUE) -> list[Mutation]:
    mutations = []
    for entry in yaml.safe_load(path.read_text()):
        edits = entry.get("edits") or [{"find": entry["find"], "replace": entry["replace"]}]
        mutations.append(
            Mutation(
                id=entry["id"],
                area=entry["area"],
                file=f"sanet/{entry['file']}",
                edits=tuple((e["find"], e["replace"]) for e in edits),
                tests=tuple(f"tests/{t}" for t in entry["tests"].split()),
                description=entry["what"],
            )
        )
    ids = [m.id for m in mutations]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"{path}: duplicate mutation ids {duplicates}")
    return mutations


MUTATIONS = load()
