"""docs/python.md runs as written: its Python blocks, in order, as one script in a new folder
(the whole workflow from Python: prepare, check, train, evaluate, calibrate, predict with unsure
pixels, audit, rank, export with INT8, serve)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "python.md"


def script() -> str:
    """The ```python blocks of docs/python.md, joined."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 7, "docs/python.md lost its workflow"
    return "\n".join(blocks)


def test_the_workflow_covers_every_verb_the_issue_names() -> None:
    text = script()
    for verb in (
        "prepare",
        "check_data",
        "train",
        "evaluate",
        "calibrate",
        "Predictor",
        "predict_files",
        "audit_labels",
        "rank",
        "export",
        "serving_app",
    ):
        assert f"sanet.{verb}(" in text, verb


@pytest.mark.slow
def test_python_doc_runs_as_written(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", script()],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert "0 errors" in out and "refused:" in out and "resume=True" in out
    assert re.search(r"val mIoU 0\.\d{3}, pixAcc 0\.\d{3}", out)
    assert re.search(r"T = [\d.]+, ECE", out) and "wrote 24 masks" in out
    assert "int8 mIoU drop" in out and "Did you mean 'voc'?" in out
