"""The training speed paths, chosen once for a whole built model by one pass over its modules.

Each path is the same function as the plain modules to float rounding (``fpn bench --train`` and
``benchmarks/train_speed_paths.py`` measure them). The parts are built plainly, knowing nothing of
the paths; ``set_training_speed_paths`` then walks the model and switches the modules that have a
faster variant, so a part passed into the detector by hand gets the same paths as a built one:

- every ``ConvNorm`` folds its FrozenBatchNorm2d into the convolution at each training step
  (``fpn.model.conv_norm``);
- every ``MultiLevelRoIPooler`` runs RoIAlign in training as a sparse matrix product, whose
  backward pass is multithreaded (``fpn.model.roi_align``).

Channels-last memory, the third path, is the detector's business: it lays out the images it
feeds the bottom-up pathway (``FasterRCNN.features``, ``fpn.model.layout``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torchvision.ops import roi_align

from fpn.model.conv_norm import ConvNorm
from fpn.model.roi_align import roi_align_for_training
from fpn.model.roi_heads import MultiLevelRoIPooler


@dataclass(frozen=True)
class TrainingSpeedPaths:
    """Which training speed paths run: FrozenBN folded into its convolution at every step, images
    in channels-last memory, RoIAlign as a sparse matrix product."""

    fold_frozen_norm: bool = True
    channels_last: bool = True
    sparse_roi_align: bool = True

    @classmethod
    def of(cls, value: bool | TrainingSpeedPaths) -> TrainingSpeedPaths:
        """True: all of them; False: none (the plain modules)."""
        if isinstance(value, TrainingSpeedPaths):
            return value
        return cls() if value else cls(fold_frozen_norm=False, channels_last=False, sparse_roi_align=False)


def set_training_speed_paths(model: nn.Module, paths: TrainingSpeedPaths) -> None:
    """Switch every module of ``model`` that has a training speed path to ``paths``' choice."""
    training_roi_align = roi_align_for_training if paths.sparse_roi_align else roi_align
    for module in model.modules():
        if isinstance(module, ConvNorm):
            module.fold_frozen_norm = paths.fold_frozen_norm
        elif isinstance(module, MultiLevelRoIPooler):
            module.training_roi_align = training_roi_align
