"""RoIAlign as a sparse matrix product: torchvision's roi_align, forward and backward."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align

from fpn.model.roi_align import roi_align_sparse
from fpn.model.roi_heads import MultiLevelRoIPooler


def _rois(count: int, n: int, extent: float, dtype=torch.float64) -> torch.Tensor:
    """Boxes over [-20, extent], some partly or wholly outside the map, some under a pixel wide."""
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(count, 2, generator=g, dtype=dtype) * (extent + 20) - 20
    wh = torch.rand(count, 2, generator=g, dtype=dtype) * extent / 2 + 0.1
    image = torch.randint(0, n, (count, 1), generator=g).to(dtype)
    return torch.cat([image, xy, xy + wh], dim=1)  # (R, 5)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
def test_sparse_roi_align_is_torchvision_roi_align_forward_and_backward(aligned, sampling_ratio):
    # float64: any difference beyond 1e-12 would be a different formula, not rounding
    features = torch.randn(2, 5, 37, 45, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    features.requires_grad_()
    rois = _rois(200, 2, 4 * 45)
    want = roi_align(features, rois, 7, 0.25, sampling_ratio, aligned)
    got = roi_align_sparse(features, rois, 7, 0.25, sampling_ratio, aligned)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    grad_out = torch.randn_like(want)
    (want_grad,) = torch.autograd.grad(want, features, grad_out)
    (got_grad,) = torch.autograd.grad(got, features, grad_out)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-12, atol=1e-12)


def test_one_bin_by_hand():
    # A 4x4 map holding x + 10y; the RoI (0.5, 0.5)-(2.5, 2.5) in one bin, one point at its
    # centre (1.5, 1.5): bilinear between 11, 12, 21, 22 -> 16.5
    ys, xs = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    features = (xs + 10 * ys)[None, None]
    rois = torch.tensor([[0.0, 0.5, 0.5, 2.5, 2.5]])
    assert roi_align_sparse(features, rois, 1, 1.0, 1).item() == pytest.approx(16.5)


def test_float32_channels_last_matches_torchvision():
    features = torch.randn(2, 16, 32, 40, generator=torch.Generator().manual_seed(2))
    features = features.contiguous(memory_format=torch.channels_last).requires_grad_()
    rois = _rois(100, 2, 8 * 40, dtype=torch.float32)
    want = roi_align(features, rois, 7, 0.125, 2, False)
    got = roi_align_sparse(features, rois, 7, 0.125, 2, False)
    # float32 sums in another order: measured up to 1.3e-5 on values up to 19; a wrong weight errs by 0.1s
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    (want_grad,) = torch.autograd.grad(want.sum(), features)
    (got_grad,) = torch.autograd.grad(got.sum(), features)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-4)


def test_adaptive_sampling_ratio_is_refused():
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align_sparse(torch.zeros(1, 1, 4, 4), torch.zeros(1, 5), 7, 1.0, 0)


def test_pooler_takes_the_sparse_path_in_training_only():
    """The training-mode RoIAlign is the pooler's constructor argument; eval mode runs torchvision's."""
    from torchvision.ops import roi_align

    calls = []

    def recorded(*args):
        calls.append(1)
        return roi_align_sparse(*args)

    pooler = MultiLevelRoIPooler({"p2": 4, "p3": 8}, training_roi_align=recorded)
    g = torch.Generator().manual_seed(0)
    features = {"p2": torch.randn(1, 4, 16, 16, generator=g), "p3": torch.randn(1, 4, 8, 8, generator=g)}
    boxes = [torch.tensor([[0.0, 0.0, 20.0, 20.0], [5.0, 5.0, 60.0, 60.0]])]
    trained = pooler.train()(features, boxes)
    assert len(calls) == 2  # one call per level
    evaluated = pooler.eval()(features, boxes)
    assert len(calls) == 2
    # float32 sums in another order: differences of about 1e-6 on values of about 1
    torch.testing.assert_close(trained, evaluated, rtol=1e-4, atol=2e-5)
    plain = MultiLevelRoIPooler({"p2": 4, "p3": 8}, training_roi_align=roi_align).train()
    torch.testing.assert_close(plain(features, boxes), trained, rtol=1e-4, atol=2e-5)
    assert len(calls) == 2
