"""The bottom-up pathway as an image classifier, for pre-training it (``fpn pretrain``).

The paper's ResNets start from ImageNet classification weights (docs/paper.md §6). Where no such
weights exist (a narrow or shallow backbone of one's own), the same start can be made by training
the backbone as a classifier first: C5, averaged over its positions, feeds one linear layer.
Only the backbone's weights are kept afterwards; the linear layer is dropped, as ImageNet's is.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor, nn

from fpn.config.schema import BackboneConfig
from fpn.model.backbone import ResNet, stage_channels


def pretraining_backbone_config(cfg: BackboneConfig) -> BackboneConfig:
    """The backbone to pre-train for ``cfg``: every stage trained, with batch statistics.

    A frozen BatchNorm (the paper's detector convention) has nothing to learn from, so it is
    pre-trained as a BatchNorm, whose statistics the detector then freezes; GroupNorm stays.
    """
    norm = "gn" if cfg.norm == "gn" else "bn"
    return dataclasses.replace(cfg, norm=norm, freeze_at=0)


class BackboneClassifier(nn.Module):
    """(N, 3, H, W) normalised images -> (N, num_classes) logits: ResNet, mean of C5, linear."""

    def __init__(self, backbone_cfg: BackboneConfig, num_classes: int):
        super().__init__()
        self.backbone = ResNet(pretraining_backbone_config(backbone_cfg))
        self.classifier = nn.Linear(stage_channels(backbone_cfg)["c5"], num_classes)

    def forward(self, images: Tensor) -> Tensor:
        c5 = self.backbone(images)["c5"]  # (N, C5, H/32, W/32)
        return self.classifier(c5.mean(dim=(2, 3)))

    def backbone_state_dict(self) -> dict[str, Tensor]:
        """The backbone's weights under the detector's keys (``backbone.*``), without BatchNorm's
        step counter, so they load into a detector with frozen or trainable normalisation."""
        return {f"backbone.{key}": value.detach().clone() for key, value in self.backbone.state_dict().items()
                if not key.endswith("num_batches_tracked")}
