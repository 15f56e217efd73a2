"""Another library's Faster R-CNN weights as an fpn run (``fpn convert``; docs/interop.md).

The run's config reproduces the source model (its conventions, class names and category ids), so
``fpn predict``, ``fpn eval`` and ``fpn.api.Detector`` use it as any other run.
"""

from __future__ import annotations

from pathlib import Path

from fpn.config.schema import Config, to_dict
from fpn.engine.checkpoint import save_checkpoint
from fpn.interop.detectors import convert_detector, describe
from fpn.safe_reading import read_checkpoint


def run_convert(weights: str | Path, output: str | Path, *, library: str | None = None) -> tuple[str, Path]:
    """Convert ``weights`` (read without running pickled code) into the run ``output``.

    Args:
        library: ``torchvision``, ``detectron2`` or ``mmdetection``; None recognises it by key names.
    Returns:
        A one-line description of the model and the checkpoint folder written.
    """
    foreign = convert_detector(read_checkpoint(weights), library=library)
    foreign.build()  # loads strictly: every tensor has its place
    path = save_checkpoint(Path(output) / "checkpoints", 0, foreign.state_dict, None,
                           to_dict(Config(model=foreign.cfg)))
    return describe(foreign), path
