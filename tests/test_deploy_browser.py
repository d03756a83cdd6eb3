"""The page of ``sanet serve`` in a real browser: Playwright drives Debian's chromium against a
real uvicorn server on loopback, uploads an image, waits for the overlay and the class table,
and checks the screenshot's pixels at a desktop (1280×800) and a phone (390×844) viewport.
Screenshots stay in the test's tmp dir.

The server's model is a stand-in that segments by colour (the reddest pixels are "disc", the
greenest "square", the bluest "background"), so the test photo's true mask is known by hand and
the overlay in the screenshot is checked region by region: at full opacity each region shows its
class colour, at zero the photo.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sanet.deploy.serve import create_app
from sanet.inference import Predictor

CHROMIUM = os.environ.get("SANET_CHROMIUM", "/usr/bin/chromium")
# The test boxes have no internet: without these chromium stalls on background connections.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
VIEWPORTS = {"desktop": (1280, 800), "phone": (390, 844)}
NAMES = ["background", "disc", "square"]
PALETTE = [(0, 0, 0), (230, 25, 75), (60, 180, 75)]


class ColourModel(nn.Module):
    """Logits = the normalised blue, red and green channels: class 0 where blue dominates,
    1 where red does, 2 where green does."""

    num_classes = 3

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": x[:, [2, 0, 1]]}


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


@pytest.fixture(scope="module")
def server():
    """``sanet serve``'s app under uvicorn in a thread, on a free loopback port."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    meta = {"class_names": NAMES, "palette": PALETTE}
    app = create_app(Predictor.from_model(ColourModel(), metadata=meta))
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(3000):
        if srv.started:
            break
        threading.Event().wait(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/", app
    srv.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser():
    sync_api = _playwright()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def photo(path: Path) -> np.ndarray:
    """Write a 121×161 picture (blue sky, a yellow disc, a green square); return its mask."""
    yy, xx = np.mgrid[:121, :161]
    rgb = np.full((121, 161, 3), (90, 140, 200), np.uint8)
    mask = np.zeros((121, 161), np.uint8)
    disc = (yy - 60) ** 2 + (xx - 50) ** 2 < 30**2
    rgb[disc], mask[disc] = (240, 200, 40), 1
    rgb[30:90, 100:150], mask[30:90, 100:150] = (40, 160, 60), 2
    Image.fromarray(rgb).save(path)
    return mask


def _stage_pixels(page, path: Path) -> np.ndarray:
    page.locator("#stage").screenshot(path=str(path))
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_page_uploads_and_shows_the_overlay(server, browser, tmp_path: Path, viewport) -> None:
    url, _ = server
    width, height = VIEWPORTS[viewport]
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_function("document.querySelectorAll('#legend li').length === 3")
    mask = photo(tmp_path / "photo.png")
    page.set_input_files("#file", str(tmp_path / "photo.png"))
    page.wait_for_function("document.body.dataset.state === 'done'", timeout=60_000)
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
    assert not errors

    # Usable at this size: nothing sticks out sideways, the image is shown large.
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    box = page.locator("#stage").bounding_box()
    assert 0.5 * min(width, 0.7 * height * 161 / 121) < box["width"] <= width

    # Full opacity: each region of the photo shows its class colour.
    page.locator("#opacity").fill("100")
    shot = _stage_pixels(page, tmp_path / f"stage-{viewport}-100.png")
    want = np.array(PALETTE)[_resize_nearest(mask, shot.shape[:2])]
    assert (np.abs(shot - want).sum(-1) <= 12).mean() > 0.97  # all but edge pixels
    # Zero opacity: the photo itself (up to the browser's smoothing when scaling it).
    page.locator("#opacity").fill("0")
    bare = _stage_pixels(page, tmp_path / f"stage-{viewport}-0.png")
    shown = np.asarray(Image.open(tmp_path / "photo.png").resize(bare.shape[1::-1])).astype(int)
    assert np.median(np.abs(bare - shown).sum(-1)) <= 12
    context.close()


def _resize_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    rows = (np.arange(size[0]) + 0.5) * mask.shape[0] / size[0]
    cols = (np.arange(size[1]) + 0.5) * mask.shape[1] / size[1]
    return mask[rows.astype(int)[:, None], cols.astype(int)[None, :]]


def test_page_shows_the_reason_of_a_refused_upload(server, browser, tmp_path: Path) -> None:
    url, _ = server
    page = browser.new_page()
    page.goto(url)
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not an image at all")
    page.set_input_files("#file", str(bad))
    page.wait_for_function("document.body.dataset.state === 'error'", timeout=60_000)
    assert page.locator("#status").inner_text().startswith("415: Not a readable image")
    page.close()
