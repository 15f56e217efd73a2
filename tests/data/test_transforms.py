"""Flip moves boxes and masks with the pixels."""

from __future__ import annotations

import torch

from fpn.data.transforms import hflip


def test_hflip_hand_computed_and_involutive():
    image = torch.zeros(3, 4, 10)
    image[:, 1:3, 2:5] = 1.0  # the object: columns 2..4
    masks = (image[:1] > 0).to(torch.uint8)
    target = {"boxes": torch.tensor([[2.0, 1.0, 5.0, 3.0]]), "masks": masks,
              "crowd_boxes": torch.tensor([[0.0, 0.0, 1.0, 1.0]])}
    flipped, t = hflip(image, target)
    torch.testing.assert_close(t["boxes"], torch.tensor([[5.0, 1.0, 8.0, 3.0]]))  # x1' = 10 - 5, x2' = 10 - 2
    torch.testing.assert_close(t["crowd_boxes"], torch.tensor([[9.0, 0.0, 10.0, 1.0]]))
    assert flipped[0, 1, 5:8].eq(1).all() and flipped[0].sum() == image[0].sum()
    assert torch.equal(t["masks"][0], (flipped[0] > 0).to(torch.uint8))
    back, t2 = hflip(flipped, t)
    assert torch.equal(back, image) and torch.equal(t2["boxes"], target["boxes"])
    _, empty = hflip(image, {"boxes": torch.zeros(0, 4)})
    assert empty["boxes"].shape == (0, 4)


def test_an_image_already_at_its_test_size_is_not_resampled_and_equals_bilinear():
    import torch.nn.functional as F

    from fpn.config.schema import InputConfig
    from fpn.model.preprocess import Preprocessor

    pre = Preprocessor(InputConfig(min_size_train=[96], min_size_test=96, max_size=200))
    g = torch.Generator().manual_seed(0)
    at_size, smaller = torch.rand(3, 96, 150, generator=g), torch.rand(3, 64, 100, generator=g)
    batch, _ = pre([at_size, smaller])
    assert batch.image_sizes == [(96, 150), (96, 150)]
    for image, got in zip((at_size, smaller), batch.tensor, strict=True):
        normalised = pre.normalize(image)
        scale = 96 / image.shape[1]
        want = F.interpolate(normalised[None], scale_factor=scale, mode="bilinear",
                             recompute_scale_factor=True, align_corners=False)[0]
        assert torch.equal(got[:, :96, :150], want)  # bit for bit, skipped or not
