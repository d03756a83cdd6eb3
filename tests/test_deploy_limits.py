"""The serving limits a user sets, at their exact boundaries: the flags' units (MiB, millions of
pixels) turned into bytes and pixels, one byte or one pixel either side of each limit, and the
defaults equal to what docs/deploy.md promises (the table a user reads is the reference)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from sanet.cli import build_parser
from sanet.cli.deploy import serve_limits
from sanet.serve.app import create_app
from sanet.serve.limits import ServeLimits
from test_deploy_serve import BASE, hand_predictor

DEPLOY_DOC = Path(__file__).resolve().parents[1] / "docs" / "deploy.md"
MIB = 1024 * 1024


def _limits(*flags: str) -> ServeLimits:
    return serve_limits(build_parser().parse_args(["serve", "--checkpoint", "x.onnx", *flags]))


def _doc_default(flag: str) -> float:
    row = re.search(rf"^\| `{flag}` \| ([\d.]+) \|", DEPLOY_DOC.read_text(), flags=re.M)
    assert row, f"docs/deploy.md lost the row of {flag}"
    return float(row.group(1))


def test_defaults_are_the_documented_ones() -> None:
    cli = _limits()
    assert cli.max_upload_bytes == _doc_default("--max-upload-mb") * MIB == 10 * 1_048_576
    assert cli.max_pixels == _doc_default("--max-megapixels") * 1_000_000 == 40_000_000
    library = ServeLimits()
    assert (library.max_upload_bytes, library.max_pixels) == (cli.max_upload_bytes, cli.max_pixels)


def test_upload_limit_counts_bytes_of_mebibytes() -> None:
    limits = _limits("--max-upload-mb", "0.01")  # 0.01 MiB = 10,485.76 → 10,485 bytes
    assert limits.max_upload_bytes == 10_485
    kind = {"content-type": "multipart/form-data; boundary=x"}
    with TestClient(create_app(hand_predictor(), limits), base_url=BASE) as client:
        at = client.post("/v1/segment", content=b"-" * 10_485, headers=kind)
        over = client.post("/v1/segment", content=b"-" * 10_486, headers=kind)
    assert at.status_code != 413 and over.status_code == 413, (at.text, over.text)
    assert "at most 10,485" in over.json()["detail"]


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 160, 30)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(("width", "status"), [(1200, 200), (1201, 413)])
def test_pixel_limit_counts_millions_of_pixels(width: int, status: int) -> None:
    limits = _limits("--max-megapixels", "0.0012")  # 1,200 pixels
    assert limits.max_pixels == 1_200
    with TestClient(create_app(hand_predictor(), limits), base_url=BASE) as client:
        r = client.post("/v1/segment", files={"image": ("a.png", _png(width, 1), "image/png")})
    assert r.status_code == status, r.text


SERVE_FLAGS = [
    (
        ["--timeout", "0"],
        "--timeout must be a number of seconds above 0, got 0.0. Try --timeout 60",
    ),
    (["--upload-timeout", "nan"], "--upload-timeout must be a number of seconds above 0, got nan"),
    (["--max-megapixels", "nan"], "--max-megapixels must be a positive number of megapixels"),
    (["--max-upload-mb", "inf"], "--max-upload-mb must be a positive number of MiB"),
    (["--max-upload-mb", "1e-9"], "--max-upload-mb must be a positive number of MiB"),
    (["--max-queue", "-1"], "--max-queue must be a whole number ≥ 0, got -1. Try --max-queue 8."),
    (["--max-concurrent", "0"], "--max-concurrent must be a whole number ≥ 1, got 0."),
    (["--drift-window", "1"], "--drift-window must be a whole number of requests ≥ 2, got 1."),
    (["--drift-false-alarm", "1"], "--drift-false-alarm must be a share between 0 and 1"),
]
INTERNAL = ("timeout_s", "max_pixels", "max_upload_bytes", "max_queue", "drift_", "NaN to")


@pytest.mark.reliability("r86")
@pytest.mark.parametrize("flags,words", SERVE_FLAGS)
def test_serve_flags_out_of_range_are_one_line_naming_the_flag(capsys, monkeypatch, flags, words):
    """Issue 28.9: ``--timeout 0`` was reported with internal field names and
    ``--max-megapixels nan`` as "cannot convert float NaN to integer"."""
    import sanet.inference
    from sanet.cli import main

    monkeypatch.setattr(sanet.inference, "Predictor", None)  # refused before any model loads
    status = main(["serve", "--checkpoint", "model.onnx", "--port", "0", *flags])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("sanet serve: error: ") and words in err, err
    assert not any(name in err for name in INTERNAL), err
