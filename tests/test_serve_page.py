"""The page's drift line in a real browser (issue 30.4): "collecting" until the window is full,
then "drifting" with the statistic and its threshold once the uploads differ from the
calibration images; "no reference" for an uncalibrated model. Drives Debian's chromium as
``test_deploy_browser.py`` does (its helpers, its stand-in ColourModel)."""

from __future__ import annotations

import numpy as np
import pytest

from sanet.inference import Predictor
from sanet.serve.app import create_app
from sanet.serve.unsure import predict
from test_deploy_browser import (
    ALPHA,
    COLOURS_JS,
    NAMES,
    PALETTE,
    TEMPERATURE,
    THRESHOLD,
    ColourModel,
    _run,
    browser,  # noqa: F401 (a fixture)
    contrast,
    open_page,
    photo,
    upload,
)
from test_serve_drift import reference_record

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def drift_server():
    """A calibrated ColourModel whose reference is 30 plain-sky images: the test photo (sky,
    a disc and a square) is a shift in every feature."""
    risk = {"alpha": ALPHA, "threshold": THRESHOLD, "assumption": "holds for test images"}
    meta = {
        "class_names": NAMES,
        "palette": PALETTE,
        "calibration": {"temperature": TEMPERATURE, "risk": risk},
    }
    predictor = Predictor.from_model(ColourModel(), metadata=meta)
    sky = np.full((121, 161, 3), (90, 140, 200), np.uint8)
    row = predict(lambda: False, predictor, sky, None).stats
    meta["calibration"]["reference"] = reference_record([row] * 30)
    app = create_app(Predictor.from_model(ColourModel(), metadata=meta), drift_window=3)
    url, srv, thread = _run(app)
    yield url
    srv.should_exit = True
    thread.join(timeout=30)


def test_the_drift_line_follows_the_uploads(drift_server, browser, tmp_path) -> None:  # noqa: F811
    page = open_page(browser, drift_server)
    line = page.locator("#drift")
    assert line.is_visible() and line.inner_text().startswith("Drift: collecting. 0 of the 3")
    photo(tmp_path / "photo.png")
    after = ["#drift-detail:has-text('1 of the 3')", "#drift-detail:has-text('2 of the 3')"]
    for ready in [*after, "#drift[data-status='drifting']"]:  # updated after each answer
        upload(page, tmp_path / "photo.png")
        page.locator(ready).wait_for()
    text = line.inner_text()
    assert text.startswith("Drift: drifting. The largest KS distance, 1.000")
    assert "is at or above the threshold" in text and "30 calibration images" in text
    page.screenshot(path=str(tmp_path / "drifting.png"), full_page=True)
    for selector in ("#drift-status", "#drift-detail"):
        assert contrast(*page.evaluate(COLOURS_JS, [selector, "color"])) >= 4.5, selector
    assert not page.problems
    page.context.close()


def test_an_uncalibrated_model_says_no_reference(browser, tmp_path) -> None:  # noqa: F811
    meta = {"class_names": NAMES, "palette": PALETTE}
    url, srv, thread = _run(create_app(Predictor.from_model(ColourModel(), metadata=meta)))
    try:
        page = open_page(browser, url, "phone")
        photo(tmp_path / "photo.png")
        upload(page, tmp_path / "photo.png")
        text = page.locator("#drift").inner_text()
        assert text.startswith("Drift: no reference. The model is not calibrated")
        for selector in ("#drift-status", "#drift-detail"):
            assert contrast(*page.evaluate(COLOURS_JS, [selector, "color"])) >= 4.5, selector
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        assert not page.problems
        page.context.close()
    finally:
        srv.should_exit = True
        thread.join(timeout=30)
