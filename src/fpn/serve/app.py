"""The HTTP API and the page: a FastAPI app around one loaded detector.

``POST /detect`` (multipart field ``image``) -> detections in the image's pixels, each with the
pyramid level its RoI was pooled from (docs/paper.md §3, Eq. 1), and the same detections in COCO
results form; ``GET /health``; ``GET /`` the page; the OpenAPI schema at ``/openapi.json`` and its
docs at ``/docs``. Bad uploads are answered with a 4xx and ``{"detail": "<one line>"}``
(``fpn.serve.uploads``), a full queue or a timeout with a 503 (``fpn.serve.batcher``). A forward
pass that runs over ``hang_timeout`` is abandoned by the batcher's watchdog and a new worker serves the
queue; while too many abandoned passes have not returned, ``/detect`` and ``/health`` answer 503.
"""

# no ``from __future__ import annotations``: FastAPI reads the endpoints' annotations, one of which
# refers to a local variable (the server's timeout)
import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.resources import files
from typing import Annotated, Any

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from fpn import __version__
from fpn.box_format import xyxy_to_xywh
from fpn.serve.batcher import Batcher, Busy, Hung, TimedOut
from fpn.serve.uploads import UploadGuard, UploadRejected, decode_image

# part content types a browser or curl may give an image; anything else is refused with a 415
IMAGE_PART_TYPES = ("image/", "application/octet-stream")


@dataclass
class ServeSettings:
    """Limits of the service (``fpn serve --help`` describes each)."""

    max_upload_mb: float = 20.0
    max_megapixels: float = 40.0
    timeout: float = 30.0
    max_batch: int = 4
    max_queue: int = 16
    # seconds one forward pass may run before the watchdog abandons it and starts a new worker
    # (default: half of ``timeout``, so the requests queued behind a hung pass are still served)
    hang_timeout: float | None = None
    decode_slots: int = 2  # images decoded at once; more wait (a 40 MP image is 120 MB as pixels)


class ErrorBody(BaseModel):
    detail: str = Field(description="one line naming the problem")


class Detection(BaseModel):
    box: list[float] = Field(description="x1, y1, x2, y2 in the uploaded image's pixels",
                             min_length=4, max_length=4)
    score: float
    label: int = Field(description="the model's class index, 1..K")
    category_id: int = Field(description="the dataset's category id of the label")
    name: str = Field(description="the category name")
    level: int = Field(description="k of the pyramid level P_k its RoI was pooled from (paper Eq. 1)")


class CocoResult(BaseModel):
    image_id: int
    category_id: int
    bbox: list[float] = Field(description="x, y, width, height", min_length=4, max_length=4)
    score: float


class DetectResponse(BaseModel):
    width: int
    height: int
    detections: list[Detection] = Field(description="best score first")
    coco: list[CocoResult] = Field(description="the same detections as COCO results")
    seconds: float = Field(description="time from the upload's arrival to its detections")


class Health(BaseModel):
    status: str = Field(description="ok, or 'not answering' (with a 503) while forward passes hang")
    version: str
    classes: list[str]
    levels: list[str] = Field(description="the pyramid levels the RoI heads pool from")
    canonical_scale: float = Field(description="Eq. 1's canonical RoI size (224 in the paper)")
    canonical_level: int = Field(description="Eq. 1's k0, the level of a RoI of the canonical size")
    precision: str = Field(description="what the convolutions and fc layers compute in: fp32, bf16 or int8")
    queued: int
    max_queue: int
    max_batch: int
    batches_run: int
    images_run: int
    workers_replaced: int = Field(description="model workers replaced after a forward pass hung")
    hung: int = Field(description="abandoned forward passes that have not returned")


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "not an image, truncated, empty, or a malformed request"},
    413: {"model": ErrorBody, "description": "upload over the byte limit or image over the pixel limit"},
    415: {"model": ErrorBody, "description": "not a multipart upload, or the part is not an image"},
    503: {"model": ErrorBody, "description": "the queue is full, the request timed out, or the model is not "
                                             "answering; retry later"},
}


def build_app(detector: Any, settings: ServeSettings | None = None) -> FastAPI:
    """The app for ``detector`` (an ``fpn.api.Detector`` with a box head)."""
    settings = settings or ServeSettings()
    batcher = Batcher(detector, max_batch=settings.max_batch, max_queue=settings.max_queue,
                      hang_seconds=settings.hang_timeout or settings.timeout / 2)
    decode_slots = asyncio.Semaphore(settings.decode_slots)
    max_pixels = int(settings.max_megapixels * 1e6)
    category_ids = list(detector.model.cfg.category_ids)
    roi_cfg, precision = detector.model.cfg.roi_heads, getattr(detector, "precision", "fp32")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="fpn serve", version=__version__, lifespan=lifespan,
                  description="Object detection with a Feature Pyramid Network (Lin et al. 2017).")
    app.add_middleware(UploadGuard, paths={"/detect"}, max_bytes=int(settings.max_upload_mb * 2**20))
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.state.batcher = batcher

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return files("fpn.serve").joinpath("page.html").read_text()

    @app.get("/health", response_model=Health, responses={503: {"model": Health}})
    async def health() -> JSONResponse:
        body = Health(status="ok" if batcher.answering else "not answering", version=__version__,
                      classes=detector.class_names, levels=list(roi_cfg.levels),
                      canonical_scale=roi_cfg.canonical_scale, canonical_level=roi_cfg.canonical_level,
                      precision=precision, queued=batcher.waiting, max_queue=batcher.max_queue,
                      max_batch=batcher.max_batch,
                      batches_run=batcher.batches_run, images_run=batcher.images_run,
                      workers_replaced=batcher.workers_replaced, hung=batcher.hung)
        return JSONResponse(body.model_dump(), status_code=200 if batcher.answering else 503)

    @app.post("/detect", response_model=DetectResponse, responses=ERRORS)
    async def detect(
        image: Annotated[UploadFile, File(description="the image (JPEG, PNG, WebP, BMP, GIF, TIFF)")],
        min_score: Annotated[float, Query(ge=0, le=1, description="drop detections scored below")] = 0.0,
        timeout: Annotated[float | None, Query(gt=0, le=settings.timeout, description=(
            f"seconds to wait at most (default and upper bound: the server's {settings.timeout:g})"))] = None,
    ) -> DetectResponse:
        start = time.perf_counter()
        deadline = start + (timeout or settings.timeout)
        tensor = await _decode(image, decode_slots, deadline, max_pixels)
        try:
            det = await batcher.detect(tensor, max(deadline - time.perf_counter(), 0.001))
        except (Busy, TimedOut, Hung) as err:
            raise HTTPException(503, str(err)) from None
        return _response(det, tensor.shape[-1], tensor.shape[-2], category_ids, min_score,
                         time.perf_counter() - start)

    return app


async def _decode(image: UploadFile, decode_slots: asyncio.Semaphore, deadline: float, max_pixels: int):
    """The uploaded image as a tensor; at most ``decode_slots`` images are decoded at once, the others
    wait, within the request's deadline (a 503 past it)."""
    if image.content_type and not image.content_type.startswith(IMAGE_PART_TYPES):
        raise UploadRejected(415, f"the 'image' part has content type {image.content_type!r}; "
                                  "expected image/*")
    try:
        await asyncio.wait_for(decode_slots.acquire(), max(deadline - time.perf_counter(), 0.001))
    except asyncio.TimeoutError:
        raise HTTPException(503, "timed out waiting to decode the image; retry later") from None
    try:
        return await run_in_threadpool(decode_image, await image.read(), max_pixels=max_pixels)
    finally:
        decode_slots.release()


def _response(det: dict, width: int, height: int, category_ids: list[int], min_score: float,
              seconds: float) -> DetectResponse:
    """The detections scored at least ``min_score``, each as a ``Detection`` and a ``CocoResult``."""
    detections, coco = [], []
    for box, xywh, score, label, name, level in zip(
        det["boxes"].tolist(), xyxy_to_xywh(det["boxes"]).tolist(), det["scores"].tolist(),
        det["labels"].tolist(), det["names"], det["levels"].tolist(), strict=True,
    ):
        if score < min_score:
            continue
        category = category_ids[label - 1] if 0 < label <= len(category_ids) else label
        detections.append(Detection(box=[round(v, 2) for v in box], score=round(score, 5), label=label,
                                    category_id=category, name=name, level=level))
        coco.append(CocoResult(image_id=0, category_id=category, bbox=[round(v, 2) for v in xywh],
                               score=round(score, 5)))
    return DetectResponse(width=width, height=height, detections=detections, coco=coco,
                          seconds=round(seconds, 4))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's list of errors as one line, 400 (a missing ``image`` field, a bad query value)."""
    problems = "; ".join(f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', '')}"
                         for err in exc.errors())
    return JSONResponse({"detail": f"bad request: {problems}"}, status_code=400)
