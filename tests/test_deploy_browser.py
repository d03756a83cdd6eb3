"""The page of ``sanet serve`` in a real browser: Playwright drives Debian's chromium against a
real uvicorn server on loopback, at a desktop (1280×800) and a phone (390×844) viewport.
Screenshots of every step stay in the test's tmp folder (the artifacts of the run).

The server's model is a stand-in that segments by colour (the reddest pixels are "disc", the
greenest "square", the bluest "background"), so the test photo's true mask is known by hand and
the overlay in a screenshot is checked region by region against colours computed here with
``colorsys`` (the page brightens dark palette colours to a lightness of 55 %). Covered: the
overlay (background transparent by default), per-class toggles, side by side, downloads, the
previous result cleared the moment an image is chosen, an error after a success, limits
checked before uploading, contrast of text and controls, no console errors under the CSP.
"""

from __future__ import annotations

import colorsys
import json
import os
import re
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sanet.inference import Predictor
from sanet.serve.app import create_app
from sanet.serve.limits import ServeLimits

# a real browser: 61 s for the 9 tests on 2 busy cores, 1–9 s each (make test-slow runs them)
pytestmark = pytest.mark.slow
CHROMIUM = os.environ.get("SANET_CHROMIUM", "/usr/bin/chromium")
# The test boxes have no internet: without these chromium stalls on background connections.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORTS = {"desktop": (1280, 800), "phone": (390, 844)}
# A calibration of the ColourModel: at T = 2 the disc's confidence is 0.505 (unsure), the sky's
# 0.539 and the square's 0.556 (sure); computed again in the test from the photo's pixels.
TEMPERATURE, THRESHOLD, ALPHA = 2.0, 0.53, 0.1
NAMES = ["background", "disc", "square"]
PALETTE = [(0, 0, 0), (230, 25, 75), (60, 180, 75)]


def shown(rgb: tuple[int, int, int]) -> tuple[int, ...]:
    """The page's display colour: the same hue at a lightness of at least 55 % (HLS)."""
    h, light, s = colorsys.rgb_to_hls(*(v / 255 for v in rgb))
    if light >= 0.55:
        return rgb
    if s == 0:
        return (140, 140, 140)
    return tuple(round(255 * v) for v in colorsys.hls_to_rgb(h, 0.55, s))


class ColourModel(nn.Module):
    """Logits = the normalised blue, red and green channels; ``hold`` (when cleared) keeps
    every forward waiting, so a test can look at the page while a request runs."""

    num_classes = 3

    def __init__(self) -> None:
        super().__init__()
        self.hold = threading.Event()
        self.hold.set()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.hold.wait(timeout=60)
        return {"out": x[:, [2, 0, 1]]}


def expect(locator):
    return _playwright().expect(locator)


def _playwright():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'"
    )
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.skip(
            f"no chromium at {CHROMIUM}: apt-get install -y --no-install-recommends chromium "
            "(.ci/run does), or set SANET_CHROMIUM to a chromium binary"
        )
    return sync_api


def _run(app) -> tuple[str, object, threading.Thread]:
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(3000):
        if srv.started:
            break
        threading.Event().wait(0.01)
    return f"http://127.0.0.1:{sock.getsockname()[1]}/", srv, thread


def _server(limits: ServeLimits | None = None, calibration: dict | None = None):
    model = ColourModel()
    meta = {"class_names": NAMES, "palette": PALETTE}
    if calibration:
        meta["calibration"] = calibration
    url, srv, thread = _run(create_app(Predictor.from_model(model, metadata=meta), limits))
    yield url, model
    srv.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def server():
    yield from _server()


@pytest.fixture(scope="module")
def small_server():
    yield from _server(ServeLimits(max_upload_bytes=40_000, max_pixels=10_000))


@pytest.fixture(scope="module")
def calibrated_server():
    from sanet.inference.confidence import protocol_settings
    from sanet.inference.protocol import EvalProtocol

    risk = {"alpha": ALPHA, "threshold": THRESHOLD, "assumption": "holds for test images"}
    record = {"temperature": TEMPERATURE, "risk": risk}
    yield from _server(calibration={**record, "protocol": protocol_settings(EvalProtocol())})


@pytest.fixture(scope="module")
def browser():
    sync_api = _playwright()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def photo(path: Path, shift: int = 0) -> np.ndarray:
    """Write a 121×161 picture (blue sky, a yellow disc, a green square); return its mask."""
    yy, xx = np.mgrid[:121, :161]
    rgb = np.full((121, 161, 3), (90, 140, 200), np.uint8)
    mask = np.zeros((121, 161), np.uint8)
    disc = (yy - 60) ** 2 + (xx - 50 - shift) ** 2 < 30**2
    rgb[disc], mask[disc] = (240, 200, 40), 1
    rgb[30:90, 100:150], mask[30:90, 100:150] = (40, 160, 60), 2
    Image.fromarray(rgb).save(path)
    return mask


def open_page(browser, url: str, viewport: str = "desktop"):
    width, height = VIEWPORTS[viewport]
    context = browser.new_context(
        viewport={"width": width, "height": height}, accept_downloads=True
    )
    page = context.new_page()
    page.problems = []  # uncaught errors and console errors (a CSP violation is one)
    page.on("pageerror", lambda e: page.problems.append(str(e)))
    page.on("console", lambda m: m.type == "error" and page.problems.append(m.text))
    page.goto(url)
    page.locator("#legend button").nth(2).wait_for()  # locators: the page's CSP forbids eval
    return page


def upload(page, path: Path, state: str = "done") -> None:
    page.set_input_files("#file", str(path))
    page.locator(f"body[data-state='{state}']").wait_for(timeout=60_000)


def stage(page, path: Path, pane: str = "#stage .pane") -> np.ndarray:
    page.locator(pane).first.screenshot(path=str(path))
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def resize_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    rows = (np.arange(size[0]) + 0.5) * mask.shape[0] / size[0]
    cols = (np.arange(size[1]) + 0.5) * mask.shape[1] / size[1]
    return mask[rows.astype(int)[:, None], cols.astype(int)[None, :]]


def close(shot: np.ndarray, want: np.ndarray, where: np.ndarray) -> float:
    """Share of the pixels in ``where`` whose colour is within 12 (sum over RGB) of ``want``."""
    return float((np.abs(shot - want).sum(-1) <= 12)[where].mean())


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_page_overlay_toggles_views_and_downloads(server, browser, tmp_path, viewport) -> None:
    url, _ = server
    page = open_page(browser, url, viewport)
    mask = photo(tmp_path / "photo.png")
    upload(page, tmp_path / "photo.png")
    page.screenshot(path=str(tmp_path / f"page-{viewport}.png"), full_page=True)

    # The table: every class with its share of the image, largest first.
    rows = page.locator("#classes tbody tr")
    names = [t.strip() for t in rows.locator("td:first-child").all_inner_texts()]
    shares = [float(t.strip(" %")) for t in rows.locator("td:nth-child(3)").all_inner_texts()]
    counts = np.bincount(mask.ravel(), minlength=3)
    by_size = sorted(range(3), key=lambda k: -counts[k])
    assert names == [NAMES[k] for k in by_size]
    assert shares == pytest.approx([100 * counts[k] / mask.size for k in by_size], abs=0.05)
    assert "161×121 px" in page.locator("#status").inner_text()

    # Usable at this size: nothing sticks out sideways, the image is shown large.
    width, height = VIEWPORTS[viewport]
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    box = page.locator("#stage .pane").first.bounding_box()
    assert 0.5 * min(width, 0.7 * height * 161 / 121) < box["width"] <= width

    # Full opacity: objects in their (brightened) class colour, the background shows the photo.
    page.locator("#opacity").fill("100")
    shot = stage(page, tmp_path / f"stage-{viewport}-100.png")
    where = resize_nearest(mask, shot.shape[:2])
    bare = np.asarray(Image.open(tmp_path / "photo.png").resize(shot.shape[1::-1])).astype(int)
    for k in (1, 2):
        assert close(shot, np.array(shown(PALETTE[k])), where == k) > 0.95
    assert np.median(np.abs(shot - bare).sum(-1)[where == 0]) <= 12  # transparent background
    # Legend toggles: background on, disc off.
    page.locator("#legend button[data-id='0']").click()
    page.locator("#legend button[data-id='1']").click()
    assert page.locator("#legend button[data-id='1']").get_attribute("aria-pressed") == "false"
    shot = stage(page, tmp_path / f"stage-{viewport}-toggled.png")
    assert close(shot, np.array(shown(PALETTE[0])), where == 0) > 0.95
    assert np.median(np.abs(shot - bare).sum(-1)[where == 1]) <= 12
    # The layer checkbox hides the whole overlay; zero opacity does too.
    page.locator("#layers input").uncheck()
    shot = stage(page, tmp_path / f"stage-{viewport}-no-layer.png")
    assert np.median(np.abs(shot - bare).sum(-1)) <= 12
    page.locator("#layers input").check()

    # Side by side: the photo alone, and the class colours alone next to (or under) it.
    page.locator("label:has(input[value=side])").click()
    assert page.locator(".mask-pane").is_visible() and not page.locator("#overlay").is_visible()
    side = stage(page, tmp_path / f"side-{viewport}.png", ".mask-pane")
    where = resize_nearest(mask, side.shape[:2])
    assert close(side, np.array(shown(PALETTE[2])), where == 2) > 0.95
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    page.screenshot(path=str(tmp_path / f"page-{viewport}-side.png"), full_page=True)

    # Downloads: the index mask, the overlay as shown, the class table.
    files = {}
    for button in ("#dl-mask", "#dl-overlay", "#dl-json"):
        with page.expect_download() as info:
            page.locator(button).click()
        files[button] = tmp_path / info.value.suggested_filename
        info.value.save_as(files[button])
    assert files["#dl-mask"].name == "photo-mask.png"
    np.testing.assert_array_equal(np.asarray(Image.open(files["#dl-mask"])), mask)
    assert Image.open(files["#dl-overlay"]).size == (161, 121)
    table = json.loads(files["#dl-json"].read_text())
    assert table["file"] == "photo.png" and [c["name"] for c in table["classes"]] == names
    assert "mask_png_base64" not in table
    assert not page.problems
    page.context.close()


def test_a_new_image_clears_the_previous_result_at_once(server, browser, tmp_path) -> None:
    url, model = server
    page = open_page(browser, url)
    photo(tmp_path / "first.png")
    upload(page, tmp_path / "first.png")
    assert page.locator("#classes tbody tr").count() == 3
    model.hold.clear()  # the next request waits in the model until the test lets it go
    try:
        photo(tmp_path / "second.png", shift=40)
        page.set_input_files("#file", str(tmp_path / "second.png"))
        page.locator("body[data-state='busy']").wait_for()
        # Stale-table case: nothing of the first image is left while the second one runs.
        assert page.locator("#classes tbody").inner_text().strip() == "Working on second.png…"
        assert page.locator("#dl-mask").is_disabled() and page.locator("#dl-json").is_disabled()
        assert page.locator(".spinner").is_visible()
        counting = re.compile(r"Segmenting second\.png… [1-9][0-9]*\.[0-9] s")
        expect(page.locator("#status-text")).to_have_text(counting, timeout=10_000)
        page.screenshot(path=str(tmp_path / "busy.png"), full_page=True)
        blank = page.evaluate(
            "(() => { const c = document.getElementById('overlay');"
            " return c.getContext('2d').getImageData(0, 0, c.width, c.height).data"
            ".every((v) => v === 0); })()"
        )
        assert blank  # the previous overlay is gone too
    finally:
        model.hold.set()
    page.locator("body[data-state='done']").wait_for(timeout=60_000)
    assert "second.png" in page.locator("#status").inner_text()
    assert not page.locator(".spinner").is_visible()
    page.context.close()


def test_an_error_after_a_success_leaves_nothing_stale(server, browser, tmp_path) -> None:
    url, _ = server
    page = open_page(browser, url, "phone")
    photo(tmp_path / "photo.png")
    upload(page, tmp_path / "photo.png")
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not an image at all")
    upload(page, bad, state="error")
    page.screenshot(path=str(tmp_path / "error-after-success.png"), full_page=True)
    status = page.locator("#status").inner_text()
    assert status.startswith("The server cannot read this file as an image.")
    assert "notes.png is not an image this server can read" in status
    assert "Error" not in status and "415" not in status  # plain words, no codes or classes
    assert page.locator("#classes tbody").inner_text().strip() == "No result."
    assert all(page.locator(b).is_disabled() for b in ("#dl-mask", "#dl-overlay", "#dl-json"))
    assert not page.locator("#legend button.present").count()
    page.context.close()


def test_limits_are_checked_before_uploading(small_server, browser, tmp_path) -> None:
    url, _ = small_server
    page = open_page(browser, url)
    posts: list[str] = []
    page.on("request", lambda r: r.method == "POST" and posts.append(r.url))
    Image.fromarray(np.zeros((100, 200, 3), np.uint8)).save(tmp_path / "wide.png")
    upload(page, tmp_path / "wide.png", state="error")
    status = page.locator("#status").inner_text()
    assert "wide.png has 20,000 pixels; the server accepts up to 10,000 pixels." in status
    noise = np.random.default_rng(0).integers(0, 256, (99, 99, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noisy.png")  # 9,801 px, ~29 kB
    big = tmp_path / "big.png"
    big.write_bytes((tmp_path / "noisy.png").read_bytes() + b"\0" * 40_000)  # still decodes
    upload(page, big, state="error")
    status = page.locator("#status").inner_text()
    assert (
        f"big.png is {-(-big.stat().st_size // 1024)} KB; the server accepts images up to 40 KB"
        in status
    )
    page.screenshot(path=str(tmp_path / "limits.png"), full_page=True)
    assert posts == []  # neither was sent
    assert "Images up to" in page.locator("#limits").inner_text()
    page.context.close()


def luminance(rgb: list[float]) -> float:
    """WCAG 2.1 relative luminance of an sRGB colour (0–255)."""
    lin = [
        c / 255 / 12.92 if c / 255 <= 0.03928 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb
    ]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(a: list[float], b: list[float]) -> float:
    la, lb = sorted([luminance(a), luminance(b)], reverse=True)
    return (la + 0.05) / (lb + 0.05)


COLOURS_JS = """([selector, property]) => {
  const el = document.querySelector(selector);
  const parse = (c) => c.match(/[\\d.]+/g).slice(0, 4).map(Number);
  let bg = el, back = [255, 255, 255];
  while (bg) {  // the nearest ancestor (or itself) with an opaque background
    const c = parse(getComputedStyle(bg).backgroundColor);
    if (c.length < 4 || c[3] > 0) { back = c.slice(0, 3); break; }
    bg = bg.parentElement;
  }
  return [parse(getComputedStyle(el)[property]).slice(0, 3), back];
}"""


def test_contrast_of_text_and_controls(server, browser, tmp_path) -> None:
    url, _ = server
    page = open_page(browser, url)
    photo(tmp_path / "photo.png")
    upload(page, tmp_path / "photo.png")
    page.locator("#legend button[data-id='1']").click()  # one class switched off
    text = [
        "#model-name", "#drop .muted", "#status-text", "#classes td", "#dl-mask",
        "#legend button[aria-pressed='true']", "#legend button[aria-pressed='false']",
        ".segmented label:has(input:checked)", ".segmented label:has(input:not(:checked))",
        "aside h2 .muted", ".opacity",
    ]  # fmt: skip
    controls = ["#drop", "#dl-mask", ".segmented", "#legend button[aria-pressed='false']"]
    ratios = {}
    for selector in text:
        fg, bg = page.evaluate(COLOURS_JS, [selector, "color"])
        ratios[selector] = contrast(fg, bg)
    for selector in controls:
        fg, bg = page.evaluate(COLOURS_JS, [selector, "borderTopColor"])
        ratios[f"{selector} border"] = contrast(fg, bg)
    low_text = {s: r for s, r in ratios.items() if "border" not in s and r < 4.5}
    low_controls = {s: r for s, r in ratios.items() if "border" in s and r < 3.0}
    assert not low_text and not low_controls, ratios
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    upload(page, bad, state="error")
    fg, bg = page.evaluate(COLOURS_JS, ["#status-text", "color"])
    assert contrast(fg, bg) >= 4.5
    assert page.evaluate("document.querySelector('link[rel=icon]').href").endswith("favicon.svg")
    assert page.request.get(url + "static/favicon.svg").ok
    page.context.close()


CANVAS_JS = """() => {
  const c = document.getElementById('overlay');
  return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);
}"""


def canvas(page) -> np.ndarray:
    return np.array(page.evaluate(CANVAS_JS), np.int64).reshape(121, 161, 4)


def confidence_of(path: Path) -> np.ndarray:
    """The ColourModel's calibrated confidence per pixel of the photo, in float64 numpy."""
    from sanet.conventions import IMAGENET_MEAN, IMAGENET_STD

    x = (np.asarray(Image.open(path)) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    e = np.exp(x[..., [2, 0, 1]] / TEMPERATURE)
    return (e / e.sum(-1, keepdims=True)).max(-1)


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_unsure_pixels_and_confidence_of_a_calibrated_model(
    calibrated_server, browser, tmp_path, viewport
) -> None:
    url, _ = calibrated_server
    page = open_page(browser, url, viewport)
    mask = photo(tmp_path / "photo.png")
    conf = confidence_of(tmp_path / "photo.png")
    assert np.abs(conf - THRESHOLD).min() > 0.005  # the unsure set is exact
    unsure = conf < THRESHOLD
    assert (unsure == (mask == 1)).all()  # here: the disc, and only it
    upload(page, tmp_path / "photo.png")
    page.screenshot(path=str(tmp_path / f"calibrated-{viewport}.png"), full_page=True)

    # The share, with the guarantee and its assumption.
    note = page.locator("#trust-note")
    assert note.is_visible()
    share = f"{100 * unsure.mean():.1f} % of the pixels are unsure"
    assert note.inner_text().startswith(f"{share} (calibrated confidence below 0.53).")
    assert "at most 10.0 %; this guarantee holds for test images." in note.inner_text()
    width = VIEWPORTS[viewport][0]
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    for selector in ("#unsure-share", "#unsure-why", "#layers label"):
        assert contrast(*page.evaluate(COLOURS_JS, [selector, "color"])) >= 4.5, selector

    # Unsure pixels hatched (diagonal stripes 2 px wide), exactly them; the rest as before.
    yy, xx = np.mgrid[:121, :161]
    hatch = np.where((((xx + yy) // 2) % 2 == 0)[..., None], [31, 41, 55], [229, 231, 235])
    rgba = canvas(page)
    np.testing.assert_array_equal(rgba[unsure][:, :3], hatch[unsure])
    assert (rgba[unsure][:, 3] == 255).all()
    assert (rgba[mask == 0][:, 3] == 0).all()  # background transparent, as without calibration
    assert (rgba[mask == 2][:, :3] == shown(PALETTE[2])).all()
    # The toggle off: the disc in its class colour again.
    page.locator("#layers input[data-layer='unsure']").uncheck()
    rgba = canvas(page)
    assert (rgba[unsure][:, :3] == shown(PALETTE[1])).all()
    # The confidence layer: grey round(255 · confidence) on every pixel.
    page.locator("#layers input[data-layer='confidence']").check()
    rgba = canvas(page)
    grey = np.rint(255 * conf)
    assert np.abs(rgba[..., :3] - grey[..., None]).max() <= 1 and (rgba[..., 3] == 255).all()
    page.locator("#opacity").fill("100")
    page.locator("#stage .pane").first.screenshot(path=str(tmp_path / f"conf-{viewport}.png"))

    with page.expect_download() as info:
        page.locator("#dl-confidence").click()
    info.value.save_as(tmp_path / "conf.png")
    assert info.value.suggested_filename == "photo-confidence.png"
    assert np.abs(np.asarray(Image.open(tmp_path / "conf.png")).astype(int) - grey).max() <= 1
    with page.expect_download() as info:
        page.locator("#dl-json").click()
    table = json.loads(Path(info.value.path()).read_text())
    assert table["unsure_share"] == pytest.approx(unsure.mean(), abs=1e-6)
    assert not [k for k in table if k.endswith("_png_base64")]
    assert not page.problems
    page.context.close()


def test_nothing_of_calibration_shows_for_an_uncalibrated_model(server, browser, tmp_path):
    url, _ = server
    page = open_page(browser, url, "phone")
    photo(tmp_path / "photo.png")
    upload(page, tmp_path / "photo.png")
    assert page.locator("#trust-note").is_hidden() and page.locator("#dl-confidence").is_hidden()
    layers = page.locator("#layers input")
    assert [layers.nth(i).get_attribute("data-layer") for i in range(layers.count())] == ["classes"]
    assert not page.problems
    page.context.close()
