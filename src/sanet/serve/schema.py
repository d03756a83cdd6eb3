"""The shapes of ``sanet serve``'s answers, for ``/openapi.json``: the multipart upload, the
segmentation answer (with a calibrated model's confidence and unsure pixels), the model, the
health answer and every error answer (``{"detail": "..."}``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """Every error answer: what went wrong and what to do."""

    detail: str = Field(description="the reason, and how to fix it")


class ClassShare(BaseModel):
    id: int
    name: str
    pixels: int = Field(description="pixels of this class in the mask (at the input's size)")
    fraction: float = Field(description="pixels / (width × height)")


class SegmentAnswer(BaseModel):
    """``POST /v1/segment?format=json``."""

    width: int = Field(description="of the input (after its EXIF rotation) and of the mask")
    height: int
    scale: float = Field(
        description="working resolution / input size: the image was predicted at this scale "
        "and its mask resized back (1.0: at its own size)"
    )
    classes: list[ClassShare] = Field(description="classes present, largest first")
    mask_png_base64: str = Field(
        description="index PNG (mode P): pixel value = class id, the palette attached"
    )
    overlay_png_base64: str | None = Field(None, description="with ?overlay=1: the overlay PNG")
    confidence_png_base64: str | None = Field(
        None,
        description="a calibrated model only (sanet calibrate): grey PNG (mode L) at the input's "
        "size, pixel value = round(255 × calibrated confidence)",
    )
    unsure_share: float | None = Field(
        None,
        description="a model with a risk threshold only (sanet calibrate --risk): share of the "
        "image's pixels whose calibrated confidence is below the threshold",
    )
    unsure_png_base64: str | None = Field(
        None, description="with a risk threshold: grey PNG, 255 on unsure pixels, 0 elsewhere"
    )
    threshold: float | None = Field(
        None, description="with a risk threshold: the confidence below which a pixel is unsure"
    )
    alpha: float | None = Field(
        None,
        description="with a risk threshold: the expected share of sure-and-wrong labelled "
        "pixels per image it guarantees at most",
    )
    assumption: str | None = Field(
        None, description="with a risk threshold: what the guarantee assumes (exchangeable images)"
    )
    seconds: float = Field(description="inference time (decode, queue and encode excluded)")
    queue_seconds: float = Field(description="time waited for an inference slot")


class CalibrationInfo(BaseModel):
    """``GET /v1/model``'s ``calibration`` (``null`` for an uncalibrated model)."""

    temperature: float = Field(description="T > 0: calibrated probabilities are softmax(logits/T)")
    threshold: float | None = Field(description="the risk threshold (null without --risk)")
    alpha: float | None = Field(description="the risk level it was chosen for")
    assumption: str | None = Field(description="what the guarantee assumes")
    record: dict[str, Any] = Field(description="everything sanet calibrate stored (ECE, NLL, ...)")


class DriftFeature(BaseModel):
    distance: float = Field(description="KS distance between the window and the reference")
    window_mean: float = Field(description="mean over the window's requests")
    reference_mean: float = Field(description="mean over the calibration images")


class DriftState(BaseModel):
    """Whether the last requests are like the calibration images (docs/deploy.md, "Drift")."""

    status: str = Field(
        description='"in distribution", "drifting", "collecting" (window not full yet) or '
        '"no reference" (an uncalibrated model, or one calibrated without reference statistics)'
    )
    detail: str = Field(description="the state in a sentence: the statistic and its threshold")
    statistic: float | None = Field(
        description="the largest KS distance over the features (null until the window is full)"
    )
    threshold: float | None = Field(
        description="the critical KS distance: drifting at or above it (Bonferroni over the "
        "features, at most false_alarm of in-distribution windows flagged)"
    )
    feature: str | None = Field(description="the feature of the largest distance")
    window: int = Field(description="requests compared (--drift-window)")
    requests: int = Field(description="requests in the window so far")
    reference_images: int | None = Field(description="calibration images of the reference")
    false_alarm: float = Field(description="the false-alarm rate per window (--drift-false-alarm)")
    features: dict[str, DriftFeature] = Field(
        description="per feature (mean_confidence, unsure_share, class_share:NAME, pixels)"
    )


class ModelAnswer(BaseModel, extra="allow"):
    """``GET /v1/model``: the checkpoint's metadata (class names, palette, ...) and these."""

    backend: str = Field(description='"torch" or "onnxruntime"')
    backend_choice: dict[str, Any] | None = Field(
        default=None,
        description="sanet serve --backend: the backend (torch-fp32, torch-bf16, "
        "onnxruntime-fp32, onnxruntime-int8), why, whether an accuracy gate decided, and the "
        "candidates; null without --backend",
    )
    num_classes: int
    class_names: list[str]
    palette: list[list[int]]
    protocol: dict[str, Any]
    limits: dict[str, Any] = Field(description="ServeLimits, with the max_side in use")
    calibration: CalibrationInfo | None
    drift: DriftState = Field(description="the drift state, as /healthz reports it")


class QueueState(BaseModel):
    running: int
    waiting: int
    capacity: int = Field(description="--max-concurrent + --max-queue")


class Health(BaseModel):
    """``GET /healthz`` once the model is loaded."""

    status: str = Field(description='"ok"')
    backend: str = Field(description='"torch" or "onnxruntime"')
    queue: QueueState
    estimated_wait_s: float = Field(description="how long a request admitted now would wait")
    seconds_per_window: float | None = Field(
        description="moving average of inference seconds per forward window (admission)"
    )
    last_inference: dict[str, Any] | None = Field(
        description="{finished (UTC), seconds, windows} of the last inference, or null"
    )
    drift: DriftState


class HealthProblem(BaseModel):
    status: str = Field(description='"loading" (503, retry) or "error" (500, restart needed)')
    detail: str


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


#: ``requestBody`` of ``POST /v1/segment`` (the route reads the body itself, so that it can
#: apply the upload deadline before parsing).
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {
                            "type": "string",
                            "format": "binary",
                            "description": "the image file: JPEG, PNG, WebP, BMP, GIF or TIFF",
                        }
                    },
                }
            }
        },
    }
}

UNSURE_QUERY = (
    "255 on the unsure pixels of the mask (JSON, PNG and overlay; the classes then count the "
    "sure pixels only). Needs a model calibrated with a risk threshold (sanet calibrate --risk), "
    "else 422."
)

SEGMENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the mask: JSON (format=json) or a PNG (format=png: the index mask, or "
        "with overlay=1 the overlay picture)",
        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
    },
    400: _error("malformed multipart body, or a Host header the server does not answer to"),
    408: _error("the upload did not finish within --upload-timeout"),
    413: _error(
        "the body is over --max-upload-mb, the image over --max-megapixels, or the image "
        "alone would take longer than --timeout"
    ),
    415: _error("the body is not multipart/form-data, or the file is not a readable image"),
    422: _error(
        "no file field 'image', an invalid query parameter, or unsure=true for a model without "
        "a risk threshold"
    ),
    500: _error("the model failed to load (restart needed), or a bug (see the server log)"),
    503: _error(
        "busy (every place taken, or the queued work would not leave time to finish) or the "
        "model is loading: retry after Retry-After seconds"
    ),
    504: _error("not done within --timeout (queue wait included); the work was stopped"),
}

HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    500: {"model": HealthProblem, "description": "the model failed to load: restart needed"},
    503: {"model": HealthProblem, "description": "the model is loading: retry"},
}

MODEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": ModelAnswer, "description": "the model"},
    500: _error("the model failed to load: restart needed"),
    503: _error("the model is loading: retry after Retry-After seconds"),
}

METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the server's counters and gauges in the Prometheus text format",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
}
