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
from fpn.engine.checkpoint import find_checkpoint, load_weights
from fpn.model.detector import FasterRCNN

ImageLike = str | Path | Image.Image | torch.Tensor


def load_image(path: str | Path) -> torch.Tensor:
    """A 3 x H x W float tensor in [0, 1], RGB, with the EXIF orientation applied.

    An unreadable image raises ``fpn.errors.DatasetError`` (a ``UserError``) naming the file.
    """
    return read_image(Path(path))


class Detector:
    """A detector in eval mode on a chosen device, fed with paths, PIL images or tensors."""

    def __init__(self, model: FasterRCNN, device: str | torch.device = "auto"):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.class_names = list(model.cfg.class_names)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", overrides: list[str] | None = None
                        ) -> Detector:
        """Load safely (safetensors: no code runs) from a run, checkpoint directory or file.

        ``overrides`` change the saved config before the model is built, as dotted
        ``model.*=value`` items (e.g. ``["model.input.test_scales=[400, 600, 800]"]``); a field
        that changes the shape of a weight makes the weights fail to load.
        """
        weights, config = find_checkpoint(path)
        values = parse_overrides(overrides or [])
        if set(values) - {"model"}:
            raise ConfigError(f"overrides {sorted(set(values) - {'model'})}: only model.* fields apply "
                              "to a loaded detector")
        model = FasterRCNN(merge(load_config(config), values, "overrides").model)
        model.load_parts(load_weights(weights), source=str(weights))
        return cls(model, device)

    def _as_tensor(self, image: ImageLike) -> torch.Tensor:
        if isinstance(image, str | Path):
            return load_image(image)
        if isinstance(image, Image.Image):
            return pil_to_tensor(ImageOps.exif_transpose(image))
        if torch.is_tensor(image):
            return image.float() / 255 if image.dtype == torch.uint8 else image
        raise TypeError(f"expected a path, a PIL image or a tensor, got {type(image).__name__}")

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
        outputs = self.model(batch, return_proposals=return_proposals, paste_masks=paste_masks)
        for out in outputs:
            if "labels" in out:
                out["names"] = [self.label_name(int(label)) for label in out["labels"]]
        return outputs[0] if single else outputs

    def label_name(self, label: int) -> str:
        if 0 < label <= len(self.class_names):
            return self.class_names[label - 1]
        return f"class_{label}"
