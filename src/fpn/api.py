"""The notebook API: load a trained detector and call it on images.

>>> from fpn.api import Detector
>>> detector = Detector.from_checkpoint("runs/demo")          # a run, a checkpoint or a file
>>> result = detector("photo.jpg")                             # or a PIL image, or a tensor
>>> result["boxes"], result["scores"], result["names"]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps

from fpn.config import ConfigError, load_config, merge, parse_overrides
from fpn.data import pil_to_tensor, read_image
from fpn.device import resolve_device
from fpn.model.detector import FasterRCNN

ImageLike = str | Path | Image.Image | torch.Tensor


def load_image(path: str | Path) -> torch.Tensor:
    """A 3 x H x W float tensor in [0, 1], RGB, with the EXIF orientation applied.

    An unreadable image raises ``fpn.data.DatasetError`` (a ValueError) naming the file.
    """
    return read_image(Path(path))


def find_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(weights file, config file) for a run directory, a checkpoint directory or a weights file."""
    from fpn.engine.checkpoint import latest_checkpoint

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run, checkpoint directory or weights file")
    if path.is_dir() and (path / "checkpoints").is_dir():
        latest = latest_checkpoint(path / "checkpoints")
        if latest is None:
            raise FileNotFoundError(f"{path}: the run has no complete checkpoint yet "
                                    f"(looked for {path / 'checkpoints'}/step_*/model.safetensors)")
        path = latest
    if path.is_dir():
        weights, config = path / "model.safetensors", path / "config.yaml"
        if not weights.is_file():
            raise FileNotFoundError(
                f"{path}: not a run or checkpoint directory (looked for {path / 'checkpoints'}/ "
                f"of a run, or {weights.name} and {config.name} of a checkpoint)")
    else:
        weights, config = path, path.parent / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{config}: not found (the config.yaml that describes {weights.name} "
                                "must be in the same directory)")
    return weights, config


class Detector:
    """A detector in eval mode on a chosen device, fed with paths, PIL images or tensors.

    ``precision``: ``auto`` (the default: bf16 or int8 where this CPU computes them natively and
    their accuracy gate passed for this kind of model, else fp32; ``fpn.model.precision``),
    ``fp32``, ``bf16`` or ``int8``. int8 calibrates on ``calibration`` (images or paths; a run
    loaded by ``from_checkpoint`` offers its training images); ``self.precision`` is the one
    chosen and ``self.network`` the module that runs.
    """

    def __init__(self, model: FasterRCNN, device: str | torch.device = "auto", *, precision: str = "auto",
                 calibration: Sequence[ImageLike] | None = None):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.class_names = list(model.cfg.class_names)
        self.precision, self.network = _at_precision(self.model, precision, calibration)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", overrides: list[str] | None = None,
                        *, precision: str = "auto", calibration: Sequence[ImageLike] | None = None,
                        fallback_calibration: Sequence[ImageLike] = ()) -> Detector:
        """Load safely (safetensors: no code runs) from a run, checkpoint directory or file.

        ``overrides`` change the saved config before the model is built, as dotted
        ``model.*=value`` items (e.g. ``["model.input.test_scales=[400, 600, 800]"]``); a field
        that changes the shape of a weight makes the weights fail to load. int8 calibrates on
        ``calibration``, else on the run's training images when they are on disk, else on
        ``fallback_calibration`` (``fpn predict`` offers its inputs).
        """
        from fpn.engine.checkpoint import load_weights

        weights, config = find_checkpoint(path)
        values = parse_overrides(overrides or [])
        if set(values) - {"model"}:
            raise ConfigError(f"overrides {sorted(set(values) - {'model'})}: only model.* fields apply "
                              "to a loaded detector")
        cfg = merge(load_config(config), values, "overrides")
        model = FasterRCNN(cfg.model)
        model.load_parts(load_weights(weights), source=str(weights))
        if calibration is None:
            calibration = (calibration_images(cfg.data.train_images)
                           or list(fallback_calibration)[:CALIBRATION_IMAGES])
        return cls(model, device, precision=precision, calibration=calibration)

    def _as_tensor(self, image: ImageLike) -> torch.Tensor:
        return _as_tensor(image)

    @torch.inference_mode()
    def __call__(self, images: ImageLike | Sequence[ImageLike], *, return_proposals: bool = False,
                 paste_masks: bool = True) -> dict[str, Any] | list[dict[str, Any]]:
        """Detections per image: ``boxes`` (xyxy, original pixels), ``scores``, ``labels``, ``names``.

        A run of the RPN alone gives ``proposals`` and ``objectness`` instead; segment proposals
        give ``masks`` (K, H, W) bool, ``scores``, ``boxes``, ``mask_probs``, ``mask_regions``
        (only the last two with ``paste_masks=False``; docs/paper.md §5).
        """
        single = not isinstance(images, list | tuple)
        batch = [self._as_tensor(img).to(self.device) for img in ([images] if single else images)]
        outputs = self.network(batch, return_proposals=return_proposals, paste_masks=paste_masks)
        for out in outputs:
            if "labels" in out:
                out["names"] = [self.label_name(int(label)) for label in out["labels"]]
        return outputs[0] if single else outputs

    def label_name(self, label: int) -> str:
        if 0 < label <= len(self.class_names):
            return self.class_names[label - 1]
        return f"class_{label}"


# Images int8 calibrates its activation ranges on, at most (fpn.model.quantize).
CALIBRATION_IMAGES = 16


def calibration_images(folder: str | Path) -> list[Path] | None:
    """The first ``CALIBRATION_IMAGES`` images of ``folder`` in name order, or None if it has none."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return found[:CALIBRATION_IMAGES] or None


def _at_precision(model: FasterRCNN, requested: str, calibration: Sequence[ImageLike] | None
                  ) -> tuple[str, torch.nn.Module]:
    """(the precision chosen, the module that runs ``model`` at it); ``fpn.model.precision``."""
    from fpn.model.precision import PrecisionError, resolve_precision, with_precision

    choice = resolve_precision(requested, model.cfg, model.device, can_calibrate=bool(calibration))
    if choice.precision == "int8" and not calibration:
        raise PrecisionError("precision int8 calibrates on images: pass calibration=[images or paths] "
                             "(--calibration DIR on the command line)")

    def images() -> list[torch.Tensor]:
        return [_as_tensor(image) for image in calibration or []]

    return choice.precision, with_precision(model, choice.precision, images)


def _as_tensor(image: ImageLike) -> torch.Tensor:
    if isinstance(image, str | Path):
        return load_image(image)
    if isinstance(image, Image.Image):
        return pil_to_tensor(ImageOps.exif_transpose(image))
    if torch.is_tensor(image):
        return image.float() / 255 if image.dtype == torch.uint8 else image
    raise TypeError(f"expected a path, a PIL image or a tensor, got {type(image).__name__}")
