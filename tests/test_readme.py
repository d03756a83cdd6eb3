"""The README's examples run as written: the Python block, the synthetic-data tour and the
`sanet compare` example."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_python_blocks_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "README has no python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def _run_bash_block(heading: str, cwd: Path) -> None:
    """Run the first ```bash block after ``heading``: every line a `sanet` command."""
    section = README.split(heading, 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    (cwd / "configs").symlink_to(ROOT / "configs")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    for line in block.strip().splitlines():
        args = shlex.split(line)
        assert args[0] == "sanet", line
        proc = subprocess.run(
            [sys.executable, "-m", "sanet.cli", *args[1:]],
            cwd=cwd,
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert proc.returncode == 0, f"{line}\n{proc.stderr[-2000:]}"


def test_readme_synthetic_tour_runs(tmp_path: Path) -> None:
    _run_bash_block("### A tour on the synthetic data", tmp_path)
    metrics = (tmp_path / "runs/tour/eval/metrics.json").read_text()
    assert '"mIoU"' in metrics
    predictions = sorted((tmp_path / "runs/tour/predictions").rglob("*.png"))
    assert len(predictions) >= 8  # one index PNG (plus an overlay) per val image
    assert (tmp_path / "runs/tour/model.onnx").stat().st_size > 1_000_000  # checked by export


def test_readme_compare_example_runs(tmp_path: Path) -> None:
    _run_bash_block("### Comparing models", tmp_path)
    payload = json.loads((tmp_path / "runs/compare-quick/compare.json").read_text())
    assert payload["models"] == ["sanet", "fcn"] and payload["paired"]["fcn"]["n"] == 2
    assert (tmp_path / "runs/compare-quick/compare.png").is_file()
