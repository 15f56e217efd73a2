"""A stand-in for torchvision's trained R50-FPN weights, for gates that need confident detections.

No trained weights can be downloaded here, and seeded random weights are a poor subject for an
accuracy gate: their scores are near-ties (``DETECTABLE_CLASS_BIAS`` raises one class for all
RoIs alike), and their box regressor sends every proposal its own way, whereas a trained one
pulls the proposals around an object onto the same box. Under rounding a near-tie flips and a
different proposal wins, so random weights fail an IoU >= 0.9 gate for reasons trained weights
do not have. (Normalising every layer on real photos, tried first, makes the network chaotic:
bf16's 0.4% rounding grew to 43% at C5.)

``probed_standin`` keeps torchvision's own initialisation for every hidden layer (the bottom-up
pathway, the pyramid, the RPN's 3x3 conv, the 2fc head) and fits the four prediction layers to
real photos and their COCO annotations, as linear probes on those random features: RPN
objectness (logistic regression on anchors labelled by IoU, >= 0.7 / < 0.3), RPN deltas and box
deltas (ridge regression onto the ground-truth boxes) and the classifier (softmax regression over
the 91 COCO slots on RoIs labelled at IoU 0.5). Its detections then sit on real objects, are
confident where the probes are, and come from a regressor that converges, as a trained
detector's do; its features are random ones, so it detects well only the photos it was fitted
on, which is where the gate measures it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection import FasterRCNN as TVFasterRCNN
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import box_iou

from fpn.bench.reference import torchvision_detector

Target = dict[str, Tensor]  # "boxes" (G, 4) xyxy in the photo's pixels, "labels" (G,) COCO ids 1..90
RIDGE = 1e-2  # ridge penalty, relative to the mean squared feature
ABSENT_CLASS_LOGIT = -20.0


def annotated_photos(folder: Path, count: int, *, skip: int = 0) -> tuple[list[Tensor], list[Target]]:
    """``count`` photos of a COCO-format folder (``images/``, ``annotations.json``), sorted by file
    name after the first ``skip``, with their non-crowd boxes and category ids."""
    from fpn.api import load_image

    coco = json.loads((Path(folder) / "annotations.json").read_text())
    images = sorted(coco["images"], key=lambda image: image["file_name"])[skip:skip + count]
    if len(images) < count:
        raise FileNotFoundError(f"{folder}: fewer than {skip + count} annotated images")
    photos, targets = [], []
    for image in images:
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"] and not a["iscrowd"]]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        photos.append(load_image(Path(folder) / "images" / image["file_name"]))
        targets.append({"boxes": boxes, "labels": torch.tensor([a["category_id"] for a in anns])})
    return photos, targets


@torch.no_grad()
def probed_standin(photos: list[Tensor], targets: list[Target], *, size: tuple[int, int] = (800, 1333),
                   seed: int = 0) -> TVFasterRCNN:
    """torchvision's R50-FPN, random hidden layers, prediction layers fitted to ``photos`` (module doc)."""
    model = torchvision_detector(seed, size=size)
    images, resized = model.transform(photos, [dict(t) for t in targets])
    features = model.backbone(images.tensors)
    _fit_rpn(model, images, list(features.values()), resized)
    proposals, _ = model.rpn(images, features)
    _fit_box_predictor(model, images, features, proposals, resized)
    return model


def _fit_rpn(model: TVFasterRCNN, images, levels: list[Tensor], targets: list[Target]) -> None:
    """Objectness by logistic regression, deltas by ridge regression, per anchor shape (A of them)."""
    head = model.rpn.head
    hidden = [head.conv(x) for x in levels]  # L x (N, C, Hi, Wi)
    anchors = model.rpn.anchor_generator(images, levels)  # N x (R, 4), order (level, y, x, anchor)
    num_shapes = head.cls_logits.out_channels
    # (N, C, Hi, Wi) -> (N, Hi, Wi, C) -> (N, Hi·Wi, C) -> repeated per anchor shape: (N, Hi·Wi·A, C)
    per_anchor = torch.cat([h.permute(0, 2, 3, 1).flatten(1, 2).repeat_interleave(num_shapes, dim=1)
                            for h in hidden], dim=1)
    shape_of = torch.arange(per_anchor.shape[1]) % num_shapes
    coder = det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    g = torch.Generator().manual_seed(0)
    weight, bias = head.cls_logits.weight, head.cls_logits.bias  # (A, C, 1, 1), (A,)
    delta_weight, delta_bias = head.bbox_pred.weight, head.bbox_pred.bias  # (4A, C, 1, 1), (4A,)
    for a in range(num_shapes):
        xs, ys, pos_x, pos_deltas = [], [], [], []
        for n, target in enumerate(targets):
            rows = (shape_of == a).nonzero().squeeze(1)
            iou = box_iou(anchors[n][rows], target["boxes"])  # (R_a, G)
            best, matched = iou.max(dim=1)
            positive = (best >= 0.7) | torch.isin(torch.arange(len(rows)), iou.argmax(dim=0))
            negative = (best < 0.3) & ~positive
            neg = negative.nonzero().squeeze(1)
            neg = neg[torch.randperm(len(neg), generator=g)[:max(256, 8 * int(positive.sum()))]]
            pos = positive.nonzero().squeeze(1)
            xs += [per_anchor[n, rows[pos]], per_anchor[n, rows[neg]]]
            ys += [torch.ones(len(pos)), torch.zeros(len(neg))]
            pos_x.append(per_anchor[n, rows[pos]])
            pos_deltas.append(coder.encode_single(target["boxes"][matched[pos]], anchors[n][rows[pos]]))
        w, b = _logistic(torch.cat(xs), torch.cat(ys))
        weight[a] = w.reshape(-1, 1, 1)
        bias[a] = b
        w, b = _ridge(torch.cat(pos_x), torch.cat(pos_deltas))
        delta_weight[4 * a:4 * a + 4] = w.reshape(4, -1, 1, 1)
        delta_bias[4 * a:4 * a + 4] = b


def _fit_box_predictor(model: TVFasterRCNN, images, features, proposals: list[Tensor],
                       targets: list[Target]) -> None:
    """The classifier by softmax regression on RoIs labelled at IoU 0.5 (background 0), the box
    regressor by ridge regression (one for all classes, copied to each class's rows)."""
    heads = model.roi_heads
    g = torch.Generator().manual_seed(0)
    rois, labels, deltas = [], [], []
    for image_proposals, target in zip(proposals, targets, strict=True):
        candidates = torch.cat([image_proposals, target["boxes"]])
        best, matched = box_iou(candidates, target["boxes"]).max(dim=1)
        fg = (best >= 0.5).nonzero().squeeze(1)
        bg = (best < 0.5).nonzero().squeeze(1)
        keep = torch.cat([fg, bg[torch.randperm(len(bg), generator=g)[:max(64, 3 * len(fg))]]])
        labels.append(torch.where(best[keep] >= 0.5, target["labels"][matched[keep]], 0))
        deltas.append(heads.box_coder.encode_single(target["boxes"][matched[keep]], candidates[keep]))
        rois.append(candidates[keep])
    pooled = heads.box_head(heads.box_roi_pool(features, rois, images.image_sizes))  # (R, 1024)
    labels, deltas = torch.cat(labels), torch.cat(deltas)
    classes = heads.box_predictor.cls_score.out_features
    present = torch.unique(torch.cat([torch.zeros(1, dtype=torch.int64), labels]))  # background first
    w, b = _softmax_regression(pooled, torch.searchsorted(present, labels), len(present))
    cls_score = heads.box_predictor.cls_score
    cls_score.weight.zero_()
    cls_score.bias.fill_(ABSENT_CLASS_LOGIT)  # classes none of the photos shows are never chosen
    cls_score.weight[present], cls_score.bias[present] = w, b
    w, b = _ridge(pooled[labels > 0], deltas[labels > 0])  # (4, 1024), (4,)
    heads.box_predictor.bbox_pred.weight.copy_(w.repeat(classes, 1))
    heads.box_predictor.bbox_pred.bias.copy_(b.repeat(classes))


def _ridge(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(W (K, D), b (K,)) minimising |x Wᵀ + b - y|² + λ|W|², in float64."""
    x, y = x.double(), y.double()
    mean_x, mean_y = x.mean(0), y.mean(0)
    xc = x - mean_x
    penalty = RIDGE * float((xc ** 2).mean()) * len(x)
    w = torch.linalg.solve(xc.T @ xc + penalty * torch.eye(x.shape[1], dtype=x.dtype), xc.T @ (y - mean_y)).T
    return w.float(), (mean_y - w @ mean_x).float()


@torch.enable_grad()
def _softmax_regression(x: Tensor, labels: Tensor, classes: int, steps: int = 200) -> tuple[Tensor, Tensor]:
    """(W (K, D), b (K,)) of a weight-decayed softmax regression fitted by L-BFGS (on standardised
    features, folded back into W and b)."""
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    w = torch.zeros(classes, x.shape[1], requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def loss() -> Tensor:
        optimizer.zero_grad()
        value = F.cross_entropy(z @ w.T + b, labels) + 1e-3 * (w ** 2).sum()
        value.backward()
        return value

    optimizer.step(loss)
    w, b = w.detach(), b.detach()
    return w / std, b - (w / std) @ mean  # z·Wᵀ + b = x·(W/s)ᵀ + (b - (W/s)·m)


def _logistic(x: Tensor, y: Tensor, steps: int = 200) -> tuple[Tensor, Tensor]:
    """(w (D,), b) of a weight-decayed logistic regression: a two-class softmax regression."""
    w, b = _softmax_regression(x, y.long(), 2, steps)
    return w[1] - w[0], b[1] - b[0]
