"""The notebook API: load a trained detector and call it on images.

>>> import fpn
>>> detector = fpn.Detector("runs/demo")          # a run, a checkpoint directory or a weights file
>>> result = detector("photo.jpg")                 # or a PIL image, a NumPy array, a tensor
>>> result.boxes, result.scores, result.names, result.levels
>>> result.plot().show(); result.to_csv("photo.csv")
>>> detector("photos/")                            # a folder (or a list): one Detections per image

Images as arrays or tensors: uint8 means 0..255, a float dtype 0..1; H x W x 3 or 3 x H x W, RGB
(``fpn.data.inputs``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from fpn.config.files import load_config
from fpn.config.overrides import merge, parse_overrides
from fpn.data.images import read_image
from fpn.data.inputs import ImageInputError, array_image_tensor, find_images, is_batch, pil_image_tensor
from fpn.detections import Detections
from fpn.engine.checkpoint import find_checkpoint, load_weights
from fpn.errors import ConfigError, PathNotFoundError, PrecisionError
from fpn.hardware import resolve_device
from fpn.model.detector import FasterRCNN

ImageLike = str | Path | Image.Image | np.ndarray | torch.Tensor
FILE_BATCH = 4  # image files read and run per forward pass


def load_image(path: str | Path) -> torch.Tensor:
    """A 3 x H x W float tensor in [0, 1], RGB, with the EXIF orientation applied.

    An unreadable image raises ``fpn.errors.DatasetError`` (a ``UserError``) naming the file.
    """
    return read_image(Path(path))


class Detector:
    """A detector in eval mode on a chosen device, called on images; returns ``Detections``.

    Args:
        model: a run directory (its newest checkpoint), a checkpoint directory, a weights file
            with its ``config.yaml`` beside it, or a ``FasterRCNN`` built already.
        device: ``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda:N``.
        score_thresh: keep only detections scored at least this. Default: what the model keeps,
            ``model.roi_heads.score_thresh`` (0.05, the threshold AP is measured at); drawings
            (``Detections.plot``) apply 0.5 on top. A value below the model's own finds nothing
            more: lower ``model.roi_heads.score_thresh`` through ``overrides`` for that.
        overrides: dotted ``model.*=value`` items that change the saved config before the model
            is built (e.g. ``["model.input.test_scales=[400, 600, 800]"]``); a field that changes
            the shape of a weight makes the weights fail to load. Only with a path.
        precision: what the convolutions and fc layers compute in (``fpn.model.precision``):
            ``auto`` (bf16 or int8 where this CPU computes them natively and their accuracy gate
            passed for this kind of model, else fp32), ``fp32``, ``bf16`` or ``int8``.
            ``self.precision`` is the one chosen, ``self.network`` the module that runs.
        calibration: the images int8 calibrates on (paths, folders, images; the first
            ``CALIBRATION_IMAGES``). Default: a run's training images when they are on disk, else
            ``fallback_calibration`` (``fpn predict`` offers its inputs).
        backend: ``pytorch`` (default) or ``openvino``: the model exported and compiled by OpenVINO
            on the CPU (``fpn.export_openvino``; about half a minute to convert), at ``fp32`` or
            ``int8`` (NNCF, calibrated as above); ``auto`` is fp32 unless OpenVINO's int8 gate passed
            for this kind of model. It gives boxes, scores and labels (no proposals, levels or masks).
    """

    def __init__(self, model: FasterRCNN | str | Path, device: str | torch.device = "auto", *,
                 score_thresh: float | None = None, overrides: list[str] | None = None,
                 precision: str = "auto", calibration: Sequence[ImageLike] | None = None,
                 fallback_calibration: Sequence[ImageLike] = (), backend: str = "pytorch"):
        train_images = None
        if not isinstance(model, FasterRCNN):
            model, train_images = _load(model, overrides)
        elif overrides:
            raise ConfigError("overrides apply to a detector loaded from a path, not to a model given")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.class_names = list(model.cfg.class_names)
        self.category_ids = list(model.cfg.category_ids)
        self.score_thresh = score_thresh
        if calibration is None and precision in ("auto", "int8"):  # only int8 calibrates
            calibration = ((calibration_images(train_images) if train_images else None)
                           or list(fallback_calibration))
        if backend not in BACKENDS:
            raise ConfigError(f"backend {backend!r}: expected one of {list(BACKENDS)}")
        self.backend = backend
        self.precision, self.network = _at_precision(self.model, precision, calibration, backend)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "auto",
                        overrides: list[str] | None = None, **options: Any) -> Detector:
        """``Detector(path, device, overrides=overrides, **options)``, the older spelling."""
        return cls(path, device, overrides=overrides, **options)

    def __call__(self, images: ImageLike | Sequence[ImageLike], *, score_thresh: float | None = None,
                 batch_size: int | None = None, progress: bool = False, return_proposals: bool = False,
                 paste_masks: bool = True) -> Detections | list[Detections]:
        """Detections of one image, or a list of them for a folder, a list or a 4-D batch.

        Images: a file path; a folder (its images, recursively, in path order); a PIL image; a
        NumPy array or a tensor (uint8 = 0..255, float = 0..1; H x W x 3 or 3 x H x W, RGB;
        ``fpn.data.inputs``); or a list of any of these. They run ``batch_size`` per forward pass
        (default: a list of images in memory all at once, files ``FILE_BATCH`` at a time, so that a
        folder is never read whole). ``score_thresh`` overrides the detector's for this call.

        A run of the RPN alone gives its proposals as boxes (label 0, "object", scores =
        objectness); segment proposals give their masks in ``extras["masks"]`` (docs/paper.md §5).
        """
        single = not (isinstance(images, list | tuple) or is_batch(images)
                      or (isinstance(images, str | Path) and Path(images).is_dir()))
        items = list(_expand(images if isinstance(images, list | tuple) else [images]))
        thresh = self.score_thresh if score_thresh is None else score_thresh
        if batch_size is None:
            batch_size = FILE_BATCH if any(isinstance(i, str | Path) for i in items) else max(1, len(items))
        results = []
        bar = tqdm(total=len(items), desc="detect", disable=not progress)
        for start in range(0, len(items), batch_size):
            chunk = [_as_input(item) for item in items[start:start + batch_size]]
            with torch.inference_mode():
                outputs = self.network([tensor.to(self.device) for tensor, _, _ in chunk],
                                     return_proposals=return_proposals, paste_masks=paste_masks)
            for (tensor, source, kept), out in zip(chunk, outputs, strict=True):
                det = self.detections(out, tuple(tensor.shape[-2:]), source=source, image=kept)
                results.append(det if thresh is None else det.above(thresh))
            bar.update(len(chunk))
        bar.close()
        return results[0] if single else results

    def detections(self, output: dict[str, Any], image_hw: tuple[int, int], *, source: str | None = None,
                   image: Image.Image | torch.Tensor | None = None) -> Detections:
        """The model's output dict for one image as ``Detections`` (ordinary CPU tensors)."""
        out = {k: _ordinary_cpu(v) if torch.is_tensor(v) else v for k, v in output.items()}
        if "labels" in out:  # the box head
            boxes, scores, labels = out.pop("boxes"), out.pop("scores"), out.pop("labels")
        elif "objectness" in out and "scores" not in out:  # the RPN alone: its proposals
            boxes, scores = out["proposals"], out["objectness"]
            labels = torch.zeros(len(boxes), dtype=torch.int64)
        else:  # segment proposals: the masks' boxes (or, unpasted, the regions they are pasted in)
            scores = out.pop("scores")
            boxes = out.pop("boxes") if "boxes" in out else out["mask_regions"]
            labels = torch.zeros(len(scores), dtype=torch.int64)
        levels = out.pop("levels", None)
        label_list = labels.tolist()
        return Detections(boxes=boxes.float(), scores=scores, labels=labels,
                          names=[self.label_name(label) for label in label_list], levels=levels,
                          image_size=(int(image_hw[0]), int(image_hw[1])),
                          category_ids=[self.category_id(label) for label in label_list],
                          source=source, image=image, extras=out)

    def label_name(self, label: int) -> str:
        if label == 0:
            return "object"
        if 0 < label <= len(self.class_names):
            return self.class_names[label - 1]
        return f"class_{label}"

    def category_id(self, label: int) -> int | None:
        """The dataset's category id of model label 1..K (the label itself without a mapping)."""
        if label == 0:
            return None
        return self.category_ids[label - 1] if 0 < label <= len(self.category_ids) else label


def load_model(path: str | Path, overrides: list[str] | None = None) -> FasterRCNN:
    """The detector a run, checkpoint directory or weights file holds, loaded safely (safetensors:
    no code runs), after ``model.*=value`` overrides of its saved config."""
    return _load(path, overrides)[0]


def _load(path: str | Path, overrides: list[str] | None) -> tuple[FasterRCNN, str]:
    """``load_model`` and the run's training images folder (``data.train_images``)."""
    weights, config = find_checkpoint(path)
    values = parse_overrides(overrides or [])
    if set(values) - {"model"}:
        raise ConfigError(f"overrides {sorted(set(values) - {'model'})}: only model.* fields apply "
                          "to a loaded detector")
    cfg = merge(load_config(config), values, "overrides")
    model = FasterRCNN(cfg.model)
    model.load_parts(load_weights(weights), source=str(weights))
    return model, cfg.data.train_images


BACKENDS = ("pytorch", "openvino")  # what runs the model: PyTorch itself, or OpenVINO (fpn.export_openvino)
# Images int8 calibrates its activation ranges on, at most (fpn.model.quantize).
CALIBRATION_IMAGES = 16


def calibration_images(folder: str | Path) -> list[Path] | None:
    """The first ``CALIBRATION_IMAGES`` images under ``folder`` in path order, or None if it has none."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    return find_images(folder)[:CALIBRATION_IMAGES] or None


def _at_precision(model: FasterRCNN, requested: str, calibration: Sequence[ImageLike] | None,
                  backend: str = "pytorch") -> tuple[str, Any]:
    """(the precision chosen, what runs ``model`` at it on ``backend``); ``fpn.model.precision``,
    ``fpn.export_openvino``."""
    from fpn.model.precision import resolve_precision, with_precision

    if backend == "openvino":
        from fpn.export_openvino import openvino_network

        if requested == "int8" and not calibration:
            raise PrecisionError("precision int8 calibrates on images: pass calibration=[images or paths] "
                                 "(--calibration DIR on the command line)")
        return openvino_network(model, requested, lambda: _calibration_tensors(calibration),
                                can_calibrate=bool(calibration))
    choice = resolve_precision(requested, model.cfg, model.device, can_calibrate=bool(calibration))
    if choice.precision == "int8" and not calibration:
        raise PrecisionError("precision int8 calibrates on images: pass calibration=[images or paths] "
                             "(--calibration DIR on the command line)")

    network = with_precision(model, choice.precision, lambda: _calibration_tensors(calibration))
    return choice.precision, network


def _calibration_tensors(calibration: Sequence[ImageLike] | None) -> list[torch.Tensor]:
    """The first ``CALIBRATION_IMAGES`` of ``calibration`` (folders expanded) as image tensors."""
    items = list(_expand(calibration or []))[:CALIBRATION_IMAGES]
    return [_as_input(item)[0] for item in items]


def _ordinary_cpu(tensor: torch.Tensor) -> torch.Tensor:
    """On the CPU, and not an inference tensor (those refuse in-place changes outside inference mode)."""
    tensor = tensor.detach().cpu()
    return tensor.clone() if tensor.is_inference() else tensor


def _expand(images: Sequence[ImageLike] | np.ndarray | torch.Tensor) -> Iterator[ImageLike]:
    """Folders -> their image files; 4-D batches -> their images; anything else as it is."""
    for item in images:
        if isinstance(item, str | Path) and Path(item).is_dir():
            found = find_images(item)
            if not found:
                raise PathNotFoundError(f"{item}: no images in this folder")
            yield from found
        elif is_batch(item):
            yield from item
        else:
            yield item


def _as_input(image: ImageLike) -> tuple[torch.Tensor, str | None, Image.Image | torch.Tensor | None]:
    """(3 x H x W float tensor in [0, 1], the file it came from, what to keep for drawing)."""
    if isinstance(image, str | Path):
        return load_image(image), str(image), None
    if isinstance(image, Image.Image):
        tensor = pil_image_tensor(image)
        return tensor, None, tensor
    if isinstance(image, np.ndarray | torch.Tensor):
        tensor = array_image_tensor(image)
        return tensor, None, tensor.cpu()
    raise ImageInputError(f"expected an image path, a folder, a PIL image, a NumPy array or a tensor, "
                          f"got {type(image).__name__}")
