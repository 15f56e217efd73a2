"""Detections for image files, folders and videos: ``predictions.json``, ``predictions.csv`` and drawn
copies (segment proposals: the masks as COCO RLE, and the best masks drawn as coloured overlays).

One threshold (``score_thresh``) decides what is written to both files and what is drawn.
Drawn copies mirror the inputs' paths relative to the folder the inputs share, so ``a/x.png``,
``a/x.jpg`` and ``b/x.png`` give ``drawn/a/x.png``, ``drawn/a/x.jpg`` and ``drawn/b/x.png``;
a video gives an annotated ``drawn/<path>.mp4``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from fpn.api import Detector, load_image
from fpn.data.inputs import IMAGE_SUFFIXES, VIDEO_SUFFIXES, find_images
from fpn.data.video import VideoWriter, read_frames, require_av, video_info
from fpn.detections import Detections, write_csv
from fpn.engine.checkpoint import find_checkpoint
from fpn.errors import ConfigError, DatasetError, PathNotFoundError, output_dir
from fpn.evaluation.coco import encode_mask_proposals
from fpn.model.segment_proposals import paste_masks
from fpn.progress import progress as progress_bar
from fpn.visualize import DRAW_SCORE_THRESH, ColourBy, save_masks_drawn, save_picture, to_pil

log = logging.getLogger(__name__)

DRAWN_PROPOSALS = 20  # a run of the RPN alone: its best proposals (above the threshold) are drawn
DRAWN_MASKS = 10  # segment proposals: the best masks (above the threshold) drawn as overlays


class NothingPredictedError(DatasetError):
    """None of the inputs could be read."""


@dataclass
class Source:
    """One input file and where its drawn copy goes (relative to ``drawn/``)."""

    path: Path
    drawn: Path
    is_video: bool


@dataclass
class PredictSummary:
    out_dir: Path
    score_thresh: float
    images: int = 0
    videos: int = 0
    frames: int = 0
    detections: int = 0
    failed: list[str] = field(default_factory=list)

    def describe(self) -> str:
        what = f"{self.images} image(s)" + (f", {self.frames} frame(s) of {self.videos} video(s)"
                                             if self.videos else "")
        return (f"{self.detections} detection(s) scored >= {self.score_thresh:g} in {what}: "
                f"{self.out_dir / 'predictions.json'}, {self.out_dir / 'predictions.csv'}, "
                f"drawn in {self.out_dir / 'drawn'}")


def expand_inputs(inputs: list[str | Path]) -> list[Source]:
    """Image and video files, and those found (recursively) in folders, each with a drawn path that
    mirrors its path relative to the folder all inputs share (so that no two collide)."""
    found: dict[str, Path] = {}  # absolute path -> the path as given
    anchors = []
    for item in map(Path, inputs):
        if item.is_dir():
            files = find_images(item) + sorted(p for p in item.rglob("*")
                                               if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
            anchors.append(os.path.abspath(item))
        elif item.exists():
            files = [item]
            anchors.append(os.path.dirname(os.path.abspath(item)))
        else:
            raise PathNotFoundError(f"{item}: no such file or folder")
        for path in files:
            found.setdefault(os.path.abspath(path), path)
    if not found:
        raise PathNotFoundError(f"no images or videos found in {[str(i) for i in inputs]}")
    base = os.path.commonpath(anchors)
    return [_source(path, Path(os.path.relpath(absolute, base))) for absolute, path in found.items()]


def _source(path: Path, relative: Path) -> Source:
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return Source(path, relative.with_suffix(".mp4"), True)
    # an image keeps its name and format; a suffix PIL cannot write gets ".png" appended
    return Source(path, relative if suffix in IMAGE_SUFFIXES else relative.with_name(relative.name + ".png"),
                  False)


def run_predict(checkpoint: str | Path, inputs: list[str | Path], out_dir: str | Path, *,
                score_thresh: float = DRAW_SCORE_THRESH, device: str = "auto", progress: bool = True,
                overrides: list[str] | None = None, colour_by: ColourBy = "class", precision: str = "auto",
                calibration: list[str | Path] | None = None, backend: str = "pytorch") -> PredictSummary:
    """Detections for images, folders and videos -> ``predictions.json`` (COCO-style records: ``bbox``
    x, y, width, height, with ``file_name``, ``category_name``, ``level``; ``frame`` for videos),
    ``predictions.csv`` (``fpn.detections.CSV_COLUMNS``: x1, y1, x2, y2) and drawn copies.

    Only detections scored at least ``score_thresh`` are written and drawn. Unreadable inputs are
    reported and skipped; if none could be read, ``NothingPredictedError`` and nothing is written.
    ``overrides`` (``model.*=value``) change the loaded model's config. ``precision`` as for
    ``Detector``; int8 calibrates on ``calibration`` (images or folders), else on the run's
    training images, else on the input images. ``backend``: pytorch or openvino, as for ``Detector``.
    """
    find_checkpoint(checkpoint)  # a wrong run folder is the first thing to say, before the inputs
    if backend == "openvino" and colour_by == "level":
        raise ConfigError("--colour-by level needs each detection's pyramid level, which the OpenVINO graph "
                          "does not return: use --backend pytorch or --colour-by class")
    sources = expand_inputs(inputs)
    detector = Detector(checkpoint, device, score_thresh=score_thresh, overrides=overrides,
                        precision=precision, calibration=calibration or None,
                        fallback_calibration=[source.path for source in sources if not source.is_video],
                        backend=backend)
    log.info("predicting at precision %s (%s)", detector.precision, backend)
    if any(source.is_video for source in sources):
        require_av()  # before any work: a one-line error naming the extra
    out_dir = output_dir(out_dir)
    summary = PredictSummary(out_dir, score_thresh)
    records: list[dict] = []
    csv_tmp = out_dir / ".predictions.csv.tmp"
    try:
        with csv_tmp.open("w", newline="") as csv_file:
            for source in progress_bar(sources, desc="predict", enabled=progress):
                try:
                    found = list(_predict_source(detector, source, out_dir / "drawn", summary,
                                                 colour_by=colour_by, progress=progress))
                except DatasetError as err:
                    log.warning("skipped: %s", err)
                    summary.failed.append(str(source.path))
                    continue
                summary.detections += write_csv(found, csv_file, header=csv_file.tell() == 0)
                records += [r for det in found for r in det.coco_records()]
        if len(summary.failed) == len(sources):
            kind = "input(s)" if any(source.is_video for source in sources) else "input image(s)"
            raise NothingPredictedError(f"none of the {len(sources)} {kind} could be read "
                                        f"(first: {summary.failed[0]}); nothing was written")
        (out_dir / "predictions.json").write_text(json.dumps(records, indent=1))
        os.replace(csv_tmp, out_dir / "predictions.csv")
    finally:
        csv_tmp.unlink(missing_ok=True)
    if summary.failed:
        log.warning("%d of %d inputs could not be read: %s", len(summary.failed), len(sources),
                    summary.failed[:5])
    return summary


def _predict_source(detector: Detector, source: Source, drawn_dir: Path, summary: PredictSummary, *,
                    colour_by: ColourBy, progress: bool) -> list[Detections]:
    """The detections of one image (a list of one) or of every frame of a video; draws them."""
    if source.is_video:
        found = _predict_video(detector, source, drawn_dir / source.drawn, progress=progress)
        summary.videos += 1
        summary.frames += len(found)
        return found
    image = load_image(source.path)
    summary.images += 1
    if detector.model.segment_proposals is not None:
        return [_segments(detector, source, image, drawn_dir / source.drawn)]
    det = detector(image)
    det.source, det.image = str(source.path), None
    drawable = det
    if _rpn_alone(det, DRAWN_PROPOSALS):  # the best DRAWN_PROPOSALS (and any tied with the last)
        drawable = det.above(float(det.scores.sort(descending=True).values[DRAWN_PROPOSALS - 1]))
    save_picture(drawable.plot(score_thresh=detector.score_thresh, colour_by=colour_by, image=to_pil(image)),
                 _mkdir(drawn_dir / source.drawn))
    return [det]


def _predict_video(detector: Detector, source: Source, drawn_path: Path, *, progress: bool
                   ) -> list[Detections]:
    """Every frame's detections (``frame`` = its index), and the annotated video at ``drawn_path``."""
    total, fps = video_info(source.path)
    found = []
    with VideoWriter(drawn_path, fps) as writer:
        frames = progress_bar(read_frames(source.path), total=total or None, desc=source.path.name,
                              leave=False, enabled=progress)
        for index, frame in enumerate(frames):
            det = detector(frame)
            det.source, det.frame = str(source.path), index
            writer.write(_as_array(det.plot(score_thresh=detector.score_thresh)))
            det.image = None  # the frames are not kept
            found.append(det)
    if not found:
        raise DatasetError(f"{source.path}: the video has no frames")
    return found


def _segments(detector: Detector, source: Source, image: torch.Tensor, drawn_path: Path) -> Detections:
    """Segment proposals of one image (docs/paper.md §5): those scored at least the threshold, each
    mask as COCO RLE (``extras["segmentation"]``), the ``DRAWN_MASKS`` best drawn as overlays."""
    det = detector(image, paste_masks=False)  # compact: K x M x M, pasted below one at a time
    image_hw = tuple(image.shape[-2:])
    threshold = detector.model.cfg.segment_proposals.mask_threshold
    rles = encode_mask_proposals(det["mask_probs"], det["mask_regions"], image_hw, threshold=threshold)
    det.boxes = (torch.tensor(mask_utils.toBbox(rles), dtype=torch.float32).reshape(-1, 4)
                 if rles else det.boxes[:0])
    det.boxes[:, 2:] += det.boxes[:, :2]  # COCO xywh -> xyxy
    top = slice(0, DRAWN_MASKS)
    masks = paste_masks(det["mask_probs"][top], det["mask_regions"][top], image_hw, threshold=threshold)
    save_masks_drawn(to_pil(image), masks, det.scores[top], _mkdir(drawn_path), detector.score_thresh)
    det.source, det.image = str(source.path), None
    det.extras = {"segmentation": rles}
    return det


def _rpn_alone(det: Detections, drawn: int) -> bool:
    """Proposals of the RPN alone (label 0, no levels), more of them than are drawn."""
    return det.levels is None and len(det) > drawn and not bool(det.labels.any())


def _mkdir(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))
