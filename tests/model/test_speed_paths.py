"""The training speed paths: the same losses and gradients as the plain modules, to float rounding."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from fpn.config.files import load_config
from fpn.model.conv_norm import ConvNorm, conv_then_norm
from fpn.model.detector import FasterRCNN
from tests.conftest import frozen_norm, randomise_norm_statistics


def _conv_and_frozen_norm(conv_bias: bool):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=conv_bias)
    norm = FrozenBatchNorm2d(6, eps=1e-5)
    randomise_norm_statistics(norm)
    return conv, norm


@pytest.mark.parametrize("conv_bias", [False, True])
def test_folded_frozen_norm_gives_the_same_outputs_and_gradients(conv_bias):
    conv, norm = _conv_and_frozen_norm(conv_bias)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 9, 11, generator=g, requires_grad=True)
    grad_out = torch.randn(2, 6, 5, 6, generator=g)
    results = []
    for fold in (False, True):
        x.grad, conv.weight.grad = None, None
        out = conv_then_norm(conv, norm, x, fold)
        out.backward(grad_out)
        results.append((out.detach(), x.grad.clone(), conv.weight.grad.clone()))
    for plain, folded in zip(*results, strict=True):
        # float32 rounding: up to 6e-6 over 20 seeds; headroom for other CPUs
        torch.testing.assert_close(folded, plain, rtol=1e-4, atol=5e-5)
    assert norm.weight.grad is None  # the frozen statistics stay constants


def test_fold_by_hand():
    conv = torch.nn.Conv2d(1, 1, 1, bias=False)
    conv.weight.data.fill_(2.0)
    norm = frozen_norm(weight=3.0, bias=0.5, mean=4.0, var=9.0)
    x = torch.tensor([[[[5.0]]]], requires_grad=True)
    out = conv_then_norm(conv, norm, x, fold=True)
    out.backward()
    # y = 3 * (2x - 4) / 3 + 0.5 = 2x - 3.5 = 6.5; dy/dW = x * 3 / 3 = 5; dy/dx = 2
    assert out.item() == pytest.approx(6.5)
    assert conv.weight.grad.item() == pytest.approx(5.0) and x.grad.item() == pytest.approx(2.0)


def test_trainable_batchnorm_is_never_folded():
    conv = torch.nn.Conv2d(3, 4, 1, bias=False)
    norm = torch.nn.BatchNorm2d(4).train()
    conv_then_norm(conv, norm, torch.randn(2, 3, 5, 5), fold=True)
    assert norm.num_batches_tracked.item() == 1  # the BatchNorm itself ran


def _tiny_detector(norm: str, fast: bool) -> FasterRCNN:
    # width 16 and d = 16: channel counts that let the fast path use channels-last (fpn.model.layout)
    torch.manual_seed(0)
    cfg = load_config(None, ["model.backbone.depth=50", "model.backbone.width=16",
                             f"model.backbone.norm={norm}", "model.backbone.freeze_at=2",
                             "model.neck.channels=16", "model.roi_heads.fc_dim=32",
                             "model.input.min_size_train=[128]", "model.input.max_size=128",
                             "model.roi_heads.num_classes=3"]).model
    model = FasterRCNN(cfg, fast_training=fast).train()
    randomise_norm_statistics(model.backbone)
    return model.double()  # float64: rounding (amplified by trainable BN on 4x4 maps) out of the way


def _batch():
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 128, 128, generator=g, dtype=torch.float64),
              torch.rand(3, 96, 128, generator=g, dtype=torch.float64)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 70.0, 90.0], [50.0, 5.0, 120.0, 40.0]]),
                "labels": torch.tensor([1, 3]), "sample_seed": 7},
               {"boxes": torch.tensor([[0.0, 0.0, 40.0, 60.0]]), "labels": torch.tensor([2]),
                "sample_seed": 8}]
    return images, targets


def _pyramid_and_grads(model: FasterRCNN) -> tuple[dict, dict]:
    """The training-mode pyramid, and the gradients of a fixed random function of it."""
    images, targets = _batch()
    batch, _ = model.preprocess(images, targets)
    pyramid = model.features(batch.tensor)
    g = torch.Generator().manual_seed(2)
    sum((p * torch.randn(p.shape, generator=g)).sum() for p in pyramid.values()).backward()
    return pyramid, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("norm", ["frozen_bn", "bn"])
def test_fast_training_gives_the_plain_pyramid_and_gradients(norm):
    fast, plain = _tiny_detector(norm, True), _tiny_detector(norm, False)
    assert fast.memory_format == torch.channels_last
    assert all(m.fold_frozen_norm for m in fast.modules() if isinstance(m, ConvNorm))
    assert not any(m.fold_frozen_norm for m in plain.modules() if isinstance(m, ConvNorm))
    with pytest.raises(AttributeError, match="chosen when the model is built"):
        fast.fast_training = False  # a speed path is a constructor argument, not a switch
    fast_pyramid, fast_grads = _pyramid_and_grads(fast)
    plain_pyramid, plain_grads = _pyramid_and_grads(plain)
    torch.testing.assert_close(fast_pyramid, plain_pyramid, rtol=1e-9, atol=1e-9)
    assert fast_grads.keys() == plain_grads.keys()
    assert not any(name.startswith(("backbone.stem", "backbone.res2")) for name in fast_grads)  # frozen
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-7, atol=1e-8, msg=name)


@pytest.mark.parametrize("norm", ["frozen_bn", "bn"])
def test_fast_training_gives_the_plain_losses(norm):
    images, targets = _batch()
    fast, plain = _tiny_detector(norm, True), _tiny_detector(norm, False)
    torch.testing.assert_close(fast(images, targets), plain(images, targets), rtol=1e-9, atol=1e-9)
