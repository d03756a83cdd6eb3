"""What goes in and out of ``POST /v1/segment``: the upload read whole within its deadline,
decoded under the pixel limit, and the answer encoded (mask PNG, overlay, class table; a
calibrated model's confidence and unsure pixels). Every refusal is a
:class:`~sanet.serve.middleware.Refused` (an ``HTTPException`` with the reason ``/metrics``
counts) whose detail says what was wrong and what to do.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
from typing import Any

import numpy as np
from fastapi import Request
from PIL import UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from sanet.conventions import IGNORE_INDEX
from sanet.data.io import DataError, TooManyPixels, load_image
from sanet.inference.predictor import Predictor
from sanet.serve.limits import ClientGone, ServeLimits
from sanet.serve.middleware import Refused
from sanet.serve.unsure import Prediction, guarantee, share, unsure_image
from sanet.viz.visualize import (
    confidence_image,
    default_palette,
    mask_to_pil,
    overlay_with_legend,
)

_PATH = re.compile(r"(?:[A-Za-z]:)?[\\/][^\s'\"]*[\\/][^\s'\",)]*")  # absolute-looking paths


def redact_paths(text: str) -> str:
    """``text`` with file-system paths replaced by ``<path>`` (answers never show them)."""
    return _PATH.sub("<path>", text)


def class_table(predictor: Predictor) -> tuple[list[str], list[list[int]]]:
    """Class names and colours, with defaults when the checkpoint has none."""
    k = int(predictor.model.num_classes)
    names = list(predictor.class_names or [f"class {i}" for i in range(k)])
    palette = predictor.palette or default_palette(k)
    return names, [list(map(int, c)) for c in palette[:k]]


class Upload(io.BytesIO):
    """An uploaded file in memory; named by its file name (no folders) in messages."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = re.split(r"[\\/]", name)[-1][-100:] or "upload"

    def __repr__(self) -> str:
        return repr(self.name)


async def read_upload(request: Request, limits: ServeLimits) -> Upload:
    """The multipart field ``image``, read whole within ``upload_timeout_s``.

    Raises:
        HTTPException: 415 not multipart, 408 too slow, 400 malformed, 422 no ``image`` field
            (413 comes from the ``BodyLimit`` middleware while reading).
        ClientGone: the client disconnected mid-upload.
    """
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        raise Refused(
            415,
            f"Expected multipart/form-data with a file field 'image', got {kind or 'none'!r}. "
            "Send e.g.: curl -F image=@photo.jpg http://HOST:PORT/v1/segment",
            "not_multipart",
        )
    try:
        await asyncio.wait_for(request.body(), limits.upload_timeout_s)
    except asyncio.TimeoutError:
        raise Refused(
            408,
            f"The upload did not finish within {limits.upload_timeout_s:g} s. Send it again "
            "over a faster connection, or send a smaller file.",
            "upload_timeout",
            headers={"Connection": "close"},
        ) from None
    except ClientDisconnect:
        raise ClientGone from None
    try:
        form = await request.form(max_files=1, max_fields=4)
    except StarletteHTTPException as err:  # python-multipart's parse errors
        raise Refused(
            400,
            f"The multipart body is malformed ({err.detail}). Send the image as a form "
            "field: curl -F image=@photo.jpg http://HOST:PORT/v1/segment",
            "malformed",
        ) from None
    try:
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise Refused(422, _no_file(form.keys(), upload), "no_image_field")
        data = await upload.read()
        if not data:
            name = Upload(b"", upload.filename or "upload").name
            raise Refused(
                422,
                f"{name} is empty (0 bytes). Choose an image file and send it again.",
                "empty_file",
            )
        return Upload(data, upload.filename or "upload")
    finally:
        await form.close()


def _no_file(fields: Any, value: str | None) -> str:
    """Why the form has no file in 'image': no such field, or a text field of that name (curl's
    ``-F image=`` or ``-F image=photo.jpg``, without the ``@`` that attaches the file)."""
    send = "Send the image as a file: curl -F image=@photo.jpg (the @ attaches the file)"
    if value is None:
        return f"The form has no field 'image' (its fields: {sorted(fields)}). {send}."
    what = "is empty" if not value else f"holds the text {value[:40]!r}"
    return f"The form field 'image' {what}, not a file. {send}."


def decode(upload: Upload, limits: ServeLimits) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB, or an HTTPException (413 too many pixels, 415 not an image)."""
    try:
        return load_image(
            upload, exif_transpose=limits.exif_transpose, max_pixels=limits.max_pixels
        )
    except TooManyPixels as err:
        raise Refused(
            413, f"{upload.name}: {err.problem}. Send a smaller image.", "too_many_pixels"
        ) from None
    except DataError as err:
        if isinstance(err.__cause__, UnidentifiedImageError):
            why = "is not an image this server can read (JPEG, PNG, WebP, BMP, GIF or TIFF)"
            fix, reason = "Choose an image file", "not_an_image"
        else:
            why = "looks like an image but is damaged or cut short"
            fix = "Send the file again, or open and re-save it in an image editor"
            reason = "damaged_image"
        raise Refused(415, f"{upload.name} {why}. {fix}.", reason) from None


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # speed over a few % of size
    return buf.getvalue()


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode(
    predictor: Predictor, rgb: np.ndarray, prediction: Prediction, fmt: str, overlay: bool
) -> bytes | dict[str, Any]:
    """The answer's content: PNG bytes, or the JSON-ready dict (without the timings). A
    calibrated model's JSON adds its confidence map, and with a risk threshold the unsure
    pixels, their share and the guarantee (docs/trust.md)."""
    names, palette = class_table(predictor)
    mask = prediction.mask
    if fmt == "png":
        picture = overlay_with_legend(rgb, mask, names, palette) if overlay else None
        return _png(picture or mask_to_pil(mask, palette))
    counts = np.bincount(mask.ravel(), minlength=len(names))
    if len(names) <= IGNORE_INDEX < len(counts):
        counts[IGNORE_INDEX] = 0  # unsure pixels (?unsure=true): no class of this model
    present = sorted(np.flatnonzero(counts), key=lambda k: -counts[k])  # largest first
    body: dict[str, Any] = {
        "width": int(mask.shape[1]),
        "height": int(mask.shape[0]),
        "classes": [
            {
                "id": int(k),
                "name": names[k] if k < len(names) else f"class {k}",
                "pixels": int(counts[k]),
                "fraction": round(float(counts[k] / mask.size), 6),
            }
            for k in present
        ],
        "mask_png_base64": _base64(_png(mask_to_pil(mask, palette))),
    }
    if overlay:
        body["overlay_png_base64"] = _base64(_png(overlay_with_legend(rgb, mask, names, palette)))
    if prediction.confidence is not None:
        body["confidence_png_base64"] = _base64(_png(confidence_image(prediction.confidence)))
    if prediction.unsure is not None:
        body["unsure_share"] = share(prediction.unsure)
        body["unsure_png_base64"] = _base64(_png(unsure_image(prediction.unsure)))
        body.update(guarantee(predictor))
    return body
