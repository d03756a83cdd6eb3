"""Contracts: every value a user's result depends on that lives in a table or a default, checked
against its source, not against the code's own constant.

- the recipe defaults and the paper recipes against the paper's training and evaluation
  settings (Sec. 3–4, Fig. 4; docs/paper-fidelity.md), written out in this file;
- ``sanet serve``'s limits against the table of docs/deploy.md (parsed), each flag reaching
  the limits it names;
- the calibration record: one list of its keys (``STORED_KEYS``) and one metadata key
  (``CALIBRATION_KEY``), what ``Predictor``, the server and ``sanet export`` read from what
  ``sanet calibrate`` stored (``tests/test_api_trust.py`` checks that calibrate writes exactly
  those keys).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from sanet.cli import build_parser
from sanet.cli.deploy import serve_limits
from sanet.config import Config, load_config
from sanet.inference import EvalProtocol
from sanet.inference.runs import run_protocol
from sanet.losses import SANetLoss
from sanet.serve.limits import ServeLimits

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "sanet"

# --- the paper -------------------------------------------------------------------------------

#: What the paper (and, for the head LR, its code base PyTorch-Encoding) trains and evaluates
#: with: L = L_mask + 0.2·L_cat + 0.8·L_dense (Fig. 4's best pair), SGD at LR 0.001 for batch 16
#: with momentum 0.9, weight decay 1e-4, poly power 0.9, heads at 10× LR, random scale 0.5–2.0
#: of base size 520 and 480² crops; evaluation at scales 0.5–1.75 of 520 with flips, in
#: 480² windows every 320 px.
PAPER = {
    "loss.alpha": 0.2,
    "loss.beta": 0.8,
    "train.lr": 0.001,
    "train.batch_size": 16,
    "train.momentum": 0.9,
    "train.weight_decay": 0.0001,
    "train.poly_power": 0.9,
    "train.head_lr_mult": 10.0,
    "data.base_size": 520,
    "data.crop_size": 480,
    "data.scale_range": [0.5, 2.0],
}
PAPER_EVAL = {
    "scales": [0.5, 0.75, 1.0, 1.25, 1.5, 1.75],
    "flip": True,
    "crop_size": 480,
    "stride": 320,
}
#: The recipes that reproduce a paper setting (the others, demo and scratch_small, say they
#: are not); the VOC fine-tuning stage runs at a tenth of the LR (docs/paper-fidelity.md).
PAPER_RECIPES = {
    "sanet_r50s_context": {},
    "sanet_r101s_context": {},
    "sanet_se_r50s_context": {},
    "fcn_r50s_context": {},
    "sanet_effb7_context": {},
    "sanet_r101s_voc_aug": {},
    "sanet_r101s_voc_finetune": {"train.lr": 0.0001},
}


def _value(cfg: Config, key: str) -> object:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def test_the_default_recipe_trains_as_the_paper() -> None:
    """What a recipe that leaves a key out gets: the paper's value."""
    cfg = Config()
    assert {key: _value(cfg, key) for key in PAPER} == PAPER
    loss = SANetLoss()
    assert (loss.alpha, loss.beta) == (PAPER["loss.alpha"], PAPER["loss.beta"])


@pytest.mark.parametrize("name", sorted(PAPER_RECIPES))
def test_each_paper_recipe_holds_the_papers_values(name: str) -> None:
    cfg = load_config(SRC / "configs" / f"{name}.yaml")
    want = {**PAPER, **PAPER_RECIPES[name]}
    assert {key: _value(cfg, key) for key in want} == want
    got = {key: getattr(cfg.eval, key) for key in PAPER_EVAL}
    assert {**got, "scales": [float(s) for s in got["scales"]]} == PAPER_EVAL


def test_the_papers_protocol_is_the_paper_evaluation() -> None:
    """``sanet eval --ms-flip`` (``mode="paper"``) and ``EvalProtocol.paper_ms_flip()``."""
    for protocol in (run_protocol(None, mode="paper"), EvalProtocol.paper_ms_flip()):
        got = {key: getattr(protocol, key) for key in PAPER_EVAL}
        assert {**got, "scales": list(got["scales"])} == PAPER_EVAL
        assert protocol.base_size == PAPER["data.base_size"]


# --- serving limits: docs/deploy.md's table ----------------------------------------------------

MIB = 1_048_576
#: flag → (ServeLimits field, what one unit of the flag is in the field's unit)
SERVE_FLAGS = {
    "--max-upload-mb": ("max_upload_bytes", MIB),
    "--max-megapixels": ("max_pixels", 1_000_000),
    "--max-side": ("max_side", 1),
    "--max-concurrent": ("max_concurrent", 1),
    "--max-queue": ("max_queue", 1),
    "--timeout": ("timeout_s", 1),
    "--upload-timeout": ("upload_timeout_s", 1),
}


def _doc_table() -> dict[str, str]:
    """The limits table of docs/deploy.md: ``{flag: default column}``."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    rows = re.findall(r"^\| `(--[a-z-]+)` \| ([^|]+) \|", text, flags=re.M)
    return {flag: default.strip() for flag, default in rows if flag in SERVE_FLAGS}


def _limits(*flags: str) -> ServeLimits:
    return serve_limits(build_parser().parse_args(["serve", "--checkpoint", "x.onnx", *flags]))


def test_every_serving_limit_is_in_the_docs_table_with_its_default() -> None:
    table = _doc_table()
    assert set(table) == set(SERVE_FLAGS), "docs/deploy.md's limits table lost or gained a row"
    cli, library = _limits(), ServeLimits()
    for flag, (field, unit) in SERVE_FLAGS.items():
        number = re.fullmatch(r"([\d.]+)( s)?", table[flag])
        if number is None:  # --max-side: "the model's working size" (decided at start-up)
            assert getattr(cli, field) is None and getattr(library, field) is None, flag
            continue
        documented = float(number.group(1)) * unit
        assert getattr(cli, field) == documented, f"{flag}: the CLI's default"
        assert getattr(library, field) == documented, f"{flag}: ServeLimits' default"


@pytest.mark.parametrize("flag", sorted(SERVE_FLAGS))
def test_each_serving_flag_sets_its_limit(flag: str) -> None:
    field, unit = SERVE_FLAGS[flag]
    value = {"--max-upload-mb": "3", "--max-megapixels": "7", "--max-side": "640"}.get(flag, "5")
    got = getattr(_limits(flag, value), field)
    assert got == float(value) * unit and got != getattr(_limits(), field)


# --- the calibration record: one list of keys, one metadata key -----------------------------


def test_the_stored_keys_are_one_list() -> None:
    from sanet.inference import confidence
    from sanet.trust import store

    assert store.STORED_KEYS is confidence.STORED_KEYS
    assert confidence.CALIBRATION_KEY == "calibration"  # the ONNX files' documented key


def test_no_module_spells_the_calibration_key_itself() -> None:
    """Readers take ``metadata[CALIBRATION_KEY]``: a literal ``"calibration"`` subscript or
    ``.get`` (where a misspelling would silently read nothing) appears nowhere in ``src/``."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            key = None
            if isinstance(node, ast.Subscript):
                key = node.slice
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "get":
                key = node.args[0] if node.args else None
            if isinstance(key, ast.Constant) and key.value == "calibration":
                found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not found, f"use CALIBRATION_KEY: {found}"


class _Spy(dict):
    """A dict that records the keys read from it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)


def _record() -> dict:
    """A record as ``sanet calibrate`` writes it (every stored key, and some it does not keep)."""
    from sanet.inference.confidence import protocol_settings

    return {
        "temperature": 1.75,
        "bins": 15,
        "ece_before": 0.12,
        "ece_after": 0.03,
        "nll_before": 0.9,
        "nll_after": 0.7,
        "images": 20,
        "protocol": protocol_settings(EvalProtocol()),
        "data": "folder:data/mine",
        "split": "val",
        "risk": {"alpha": 0.1, "threshold": 0.613, "assumption": "exchangeable"},
        "reference": {  # the drift reference: per calibration image (serve/drift.py)
            "images": 2,
            "per_image": {
                "mean_confidence": [0.9, 0.8],
                "unsure_share": [0.1, 0.2],
                "class_shares": [[0.5, 0.5], [0.4, 0.6]],
                "pixels": [100, 120],
            },
        },
        "per_class_ece": {"a": 0.1},  # calibration.json only
        "reliability": {"bin_edges": [0.0, 1.0]},
    }


def test_predictor_reads_only_stored_keys() -> None:
    from sanet.inference.confidence import CALIBRATION_KEY, STORED_KEYS, read_calibration

    record = _Spy(_record())
    metadata = _Spy({CALIBRATION_KEY: record, "class_names": ["a"]})
    calibration = read_calibration(metadata)
    assert metadata.read == {CALIBRATION_KEY}
    assert record.read and record.read <= set(STORED_KEYS), record.read - set(STORED_KEYS)
    assert (calibration.temperature, calibration.threshold, calibration.alpha) == (1.75, 0.613, 0.1)


def test_what_calibrate_stores_is_what_predictor_serve_and_export_read(tmp_path: Path) -> None:
    from sanet.exporting.export import build_metadata
    from sanet.inference import Predictor
    from sanet.inference.confidence import CALIBRATION_KEY, STORED_KEYS
    from sanet.models.registry import build_model, load_model
    from sanet.serve.unsure import model_calibration
    from sanet.trust.store import store_calibration

    folder = tmp_path / "model"
    model = build_model("sanet", backbone="resnet10t", num_classes=2)
    model.save_pretrained(folder, metadata={"class_names": ["a", "b"]})
    config = store_calibration(folder, _record())
    stored = json.loads(config.read_text())["metadata"][CALIBRATION_KEY]
    assert list(stored) == list(STORED_KEYS)
    assert stored == {key: _record()[key] for key in STORED_KEYS}
    predictor = Predictor(folder)
    c = predictor.calibration
    assert (c.temperature, c.threshold, c.alpha) == (1.75, 0.613, 0.1)
    assert c.record == stored and c.matches(predictor.protocol)
    served = model_calibration(predictor)
    assert (served["temperature"], served["threshold"], served["alpha"]) == (1.75, 0.613, 0.1)
    assert served["record"] == stored
    loaded, meta = load_model(folder)
    exported = build_metadata(loaded, meta, predictor.protocol)
    assert exported[CALIBRATION_KEY] == stored
