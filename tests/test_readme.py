"""The README's examples run as written: the Python block, the synthetic-data tour, the
`sanet compare` example and the trust commands (slow)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_python_blocks_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "README has no python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def _run_bash_block(heading: str, cwd: Path, extra: dict[str, list[str]] | None = None) -> None:
    """Run the first ```bash block after ``heading``: every line a `sanet` command;
    ``extra[command]``: flags added to that command (a stand-in model's allowances)."""
    section = README.split(heading, 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    (cwd / "configs").symlink_to(ROOT / "configs")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    for line in block.strip().splitlines():
        args = shlex.split(line)
        assert args[0] == "sanet", line
        args += (extra or {}).get(args[1], [])
        proc = subprocess.run(
            [sys.executable, "-m", "sanet.cli", *args[1:]],
            cwd=cwd,
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert proc.returncode == 0, f"{line}\n{proc.stderr[-2000:]}"


@pytest.mark.slow  # the README's longest examples: a run each (CI: make test-slow)
def test_readme_synthetic_tour_runs(tmp_path: Path) -> None:
    _run_bash_block("### A tour on the synthetic data", tmp_path)
    metrics = (tmp_path / "runs/tour/eval/metrics.json").read_text()
    assert '"mIoU"' in metrics
    predictions = sorted((tmp_path / "runs/tour/predictions").rglob("*.png"))
    assert len(predictions) >= 8  # one index PNG (plus an overlay) per val image
    assert (tmp_path / "runs/tour/model.onnx").stat().st_size > 1_000_000  # checked by export


@pytest.mark.slow  # the README's longest examples: a run each (CI: make test-slow)
def test_readme_compare_example_runs(tmp_path: Path) -> None:
    _run_bash_block("### Comparing models", tmp_path)
    payload = json.loads((tmp_path / "runs/compare-quick/compare.json").read_text())
    assert payload["models"] == ["sanet", "fcn"] and payload["paired"]["fcn"]["n"] == 2
    assert (tmp_path / "runs/compare-quick/compare.png").is_file()


@pytest.mark.slow
def test_readme_trust_commands_run(tmp_path: Path) -> None:
    """The trust block runs on `make demo`'s `runs/demo`; a few steps of the same recipe stand in."""
    quick = ["train.max_steps=6", "train.val_every=0", "data.options={num_images: 32, size: 96}"]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "sanet.cli",
            "train",
            str(ROOT / "configs/demo.yaml"),
            "--out",
            "runs/demo",
            "--set",
            *quick,
        ],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
        timeout=600,
    )
    # The README's audit runs on the demo's trained model; this 6-step stand-in agrees too little
    # with the labels for the audit's gate (min_miou 0.3, docs/trust.md), so it is let through.
    _run_bash_block(
        "## Trust: calibrated confidence", tmp_path, {"audit-labels": ["--min-miou", "0"]}
    )
    record = json.loads((tmp_path / "runs/demo/calibration/calibration.json").read_text())
    assert record["images"] == 200 and record["risk"]["alpha"] == 0.05
    assert len(list((tmp_path / "runs/demo/unsure").glob("*_confidence.png"))) == 200
    assert (tmp_path / "runs/demo/audit/label_audit.json").is_file()
    assert len((tmp_path / "runs/demo/to-label.csv").read_text().splitlines()) == 201
