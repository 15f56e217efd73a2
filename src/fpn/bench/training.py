"""Training speed against torchvision, measured in one process on identical weights and batches.

``fpn bench --train`` prints, for each setting: the median time of one SGD step (forward,
backward, optimizer) for fpn and for torchvision, images per second, the peak memory growth
during a step, and the ratio of the step times; then the first step's losses of both.

Both detectors are R50-FPN with FrozenBN (eps 0), the stem and res2 frozen (torchvision's
``trainable_layers=3``), built from the same seeded random weights (``fpn.from_torchvision``),
trained with the same SGD (``fpn.engine.optim.build_optimizer``) on the same images and
targets; their steps alternate, so a busy machine slows both alike. The demo preset has no
torchvision twin: its row sets fpn against itself with the training speed paths off
(``FasterRCNN(cfg, fast_training=False)``), which is the code as it was before them.

With ``--precision bf16`` (or ``all``; ``auto``: where the CPU computes bf16 natively) an R50-FPN
512 px row runs fpn's forward under bf16 autocast (``train.precision``) against torchvision fp32.

The first-step losses of the two libraries differ by their random choice of anchors and RoIs
(torchvision draws from the global generator, fpn from a per-image seed); the fpn losses with
and without the speed paths must agree to float tolerance, and the table shows that.
"""

from __future__ import annotations

import ctypes
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN as TVFasterRCNN

from fpn.bench.common import PeakRSS, markdown_table
from fpn.bench.reference import fpn_twin, torchvision_detector
from fpn.config.files import load_config
from fpn.config.schema import TrainConfig
from fpn.engine.optim import build_optimizer
from fpn.hardware import autocast
from fpn.model.detector import FasterRCNN

Batch = tuple[list[Tensor], list[dict[str, Tensor]]]


def torchvision_trainable(size: tuple[int, int], seed: int = 0) -> TVFasterRCNN:
    """torchvision's R50-FPN Faster R-CNN as trained by its reference scripts, seeded random weights.

    FrozenBN with eps 0 (as for its published weights), conv1 and layer1 frozen, 91 classes;
    its resize is set to ``size`` so that it, like ours, trains on the pixels it is given.
    """
    return torchvision_detector(seed, size=(min(size), max(size))).train()


def fpn_trainable(reference: TVFasterRCNN) -> FasterRCNN:
    """Our detector holding ``reference``'s weights, training on the pixels it is given (the
    reference's resize), in training mode."""
    return fpn_twin(reference).train()


def random_batch(size: tuple[int, int], batch: int, num_classes: int, seed: int = 0) -> Batch:
    """``batch`` random images of ``size`` with 1..8 random boxes (8 px or larger) each.

    Each target carries a ``sample_seed``, so fpn draws the same anchors and RoIs at every call
    (torchvision ignores it).
    """
    g = torch.Generator().manual_seed(seed)
    h, w = size
    images, targets = [], []
    for _ in range(batch):
        images.append(torch.rand(3, h, w, generator=g))
        count = int(torch.randint(1, 9, (), generator=g))
        xy = torch.rand(count, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8])
        wh = 8 + torch.rand(count, 2, generator=g) * torch.tensor([w * 0.5, h * 0.5])
        boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([w - 1.0, h - 1.0]))], dim=1)
        labels = torch.randint(1, num_classes + 1, (count,), generator=g)
        targets.append({"boxes": boxes, "labels": labels, "sample_seed": seed * 1000 + len(targets)})
    return images, targets


def synthetic_batch(batch: int, image_size: int = 256, seed: int = 0) -> Batch:
    """``batch`` images of the built-in synthetic benchmark (the demo's data), made in memory."""
    from fpn.data.synthetic import make_image

    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(batch):
        image, objects = make_image(rng, image_size)
        boxes = []
        for _, mask in objects:
            ys, xs = np.nonzero(mask)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        images.append(torch.from_numpy(image).permute(2, 0, 1).float() / 255)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32),
                        "labels": torch.tensor([k + 1 for k, _ in objects]),
                        "sample_seed": seed * 1000 + len(targets)})
    return images, targets


def optimizer_for(model: nn.Module, batch_size: int) -> torch.optim.Optimizer:
    """The paper's SGD (lr 0.02 per 16 images, momentum 0.9, weight decay 1e-4), as fpn trains."""
    return build_optimizer(model, TrainConfig(batch_size=batch_size))


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, precision: str = "fp32"
               ) -> dict[str, float]:
    """One SGD step, as ``fpn.engine.loop.TrainLoop.step`` takes it: forward (under autocast at
    ``precision``, as ``train.precision`` does), backward, update."""
    images, targets = batch
    with autocast(torch.device("cpu"), precision):
        losses = model(images, [dict(t) for t in targets])
    total = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    return {k: v.item() for k, v in losses.items()}


def _trim_heap() -> None:
    """Give freed memory back to the system, so that a step's RSS growth is its own (glibc)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass
class Timed:
    seconds: list[float]
    peak_mib: float

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def interleaved(steps: dict[str, Callable[[], object]], repeats: int) -> dict[str, Timed]:
    """Each step once as a warm-up, then ``repeats`` rounds of one step each, in turn."""
    timed = {name: Timed([], 0.0) for name in steps}
    for step in steps.values():
        step()
    for _ in range(repeats):
        for name, step in steps.items():
            _trim_heap()
            with PeakRSS() as mem:
                start = time.perf_counter()
                step()
                timed[name].seconds.append(time.perf_counter() - start)
            timed[name].peak_mib = max(timed[name].peak_mib, mem.growth)
    return timed


HEADER = ["setting", "fpn s/step", "reference s/step", "ratio", "fpn img/s", "reference img/s",
          "fpn peak MiB", "reference peak MiB"]


def _row(name: str, batch: int, ours: Timed, reference: Timed) -> list[str]:
    return [name, f"{ours.median:.3f}", f"{reference.median:.3f}", f"{ours.median / reference.median:.2f}",
            f"{batch / ours.median:.2f}", f"{batch / reference.median:.2f}", f"{ours.peak_mib:.0f}",
            f"{reference.peak_mib:.0f}"]


def _loss_rows(name: str, ours: dict[str, float], reference: dict[str, float]) -> list[list[str]]:
    return [[name, key, f"{ours[key]:.6f}", f"{reference[key]:.6f}", f"{abs(ours[key] - reference[key]):.1e}"]
            for key in ours if key in reference]


# torchvision's loss names against ours.
TV_LOSS_NAMES = {"loss_objectness": "loss_rpn_objectness", "loss_rpn_box_reg": "loss_rpn_box",
                 "loss_classifier": "loss_cls", "loss_box_reg": "loss_box"}


def against_torchvision(size: tuple[int, int], batch: int, repeats: int, precision: str = "fp32"
                        ) -> tuple[list[str], list[list[str]]]:
    """A table row of fpn (at ``precision``) against torchvision fp32 on R50-FPN, and their
    first-step losses."""
    reference = torchvision_trainable(size)
    ours = fpn_trainable(reference)
    data = random_batch(size, batch, num_classes=90)
    torch.manual_seed(0)
    first_ref = {TV_LOSS_NAMES[k]: v for k, v in train_step(reference, optimizer_for(reference, batch),
                                                             data).items()}
    first_ours = train_step(ours, optimizer_for(ours, batch), data, precision)
    reference = torchvision_trainable(size)  # fresh weights and optimizers for the timed steps
    ours = fpn_trainable(reference)
    opt_ref, opt_ours = optimizer_for(reference, batch), optimizer_for(ours, batch)
    timed = interleaved({"fpn": lambda: train_step(ours, opt_ours, data, precision),
                         "torchvision": lambda: train_step(reference, opt_ref, data)}, repeats)
    name = f"R50-FPN {size[0]}x{size[1]}, batch {batch}"
    name += f", fpn {precision}" if precision != "fp32" else ""
    losses = _loss_rows(f"{name}: fpn vs torchvision (sampling differs)", first_ours, first_ref)
    return _row(name, batch, timed["fpn"], timed["torchvision"]), losses


def against_plain_modules(cfg_name: str, batch: int, repeats: int, model_fn: Callable[[], FasterRCNN],
                          data: Batch) -> tuple[list[str], list[list[str]]]:
    """fpn with its training speed paths against fpn without them: same weights, same batch."""

    def twins() -> tuple[FasterRCNN, FasterRCNN]:
        fast = model_fn()
        plain = FasterRCNN(fast.cfg, fast_training=False)  # the same weights, built without the paths
        plain.load_state_dict(fast.state_dict())
        return fast, plain.train()

    fast, plain = twins()
    first_fast = train_step(fast, optimizer_for(fast, batch), data)
    first_plain = train_step(plain, optimizer_for(plain, batch), data)
    fast, plain = twins()  # fresh weights and optimizers for the timed steps
    opt_fast, opt_plain = optimizer_for(fast, batch), optimizer_for(plain, batch)
    timed = interleaved({"fast": lambda: train_step(fast, opt_fast, data),
                         "plain": lambda: train_step(plain, opt_plain, data)}, repeats)
    losses = _loss_rows(f"{cfg_name}: fpn vs fpn without speed paths", first_fast, first_plain)
    return _row(f"{cfg_name} (reference: fpn without speed paths)", batch, timed["fast"],
                timed["plain"]), losses


def demo_model() -> FasterRCNN:
    from fpn.data.synthetic import CLASSES

    cfg = load_config("demo", [f"model.roi_heads.num_classes={len(CLASSES)}"]).model
    torch.manual_seed(0)
    return FasterRCNN(cfg).train()


def setting(name: str) -> tuple[Callable[[], FasterRCNN], Batch, int]:
    """A model builder, a batch and its size for a benchmark script's ``--setting``: "demo" (the
    demo preset on synthetic images) or "r50_512" (R50-FPN with torchvision's weights, 512 px)."""
    if name == "demo":
        return demo_model, synthetic_batch(4), 4
    size = (512, 512)
    reference = torchvision_trainable(size)
    return (lambda: fpn_trainable(reference)), random_batch(size, 2, 90), 2


def run(repeats: int = 5, quick: bool = False, threads: int | None = None, precision: str = "fp32") -> str:
    """The whole training benchmark; returns the report as Markdown. ``precision`` "bf16" (or "auto",
    bf16 where native) adds R50-FPN 512 px rows with fpn's forward under bf16 autocast."""
    from fpn.hardware import describe_machine
    from fpn.model.precision import training_precision

    if threads:
        torch.set_num_threads(threads)
    report = [f"machine: {describe_machine()}",
              f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
              f"{torch.get_num_threads()} threads; median of {repeats} interleaved steps after a warm-up "
              "step (fewer at 800 px); peak MiB: resident memory growth during a step\n"]
    rows, loss_rows = [], []
    settings = [((512, 512), 2, repeats, "fp32")]
    if not quick:
        settings.append(((800, 800), 2, max(2, repeats // 2), "fp32"))
    wanted = "bf16" if precision == "all" else precision
    low = training_precision(wanted, torch.device("cpu")) if wanted in ("auto", "bf16") else "fp32"
    if low != "fp32":
        settings.append(((512, 512), 2, max(2, repeats // 2), low))
    for size, batch, n, step_precision in settings:
        row, losses = against_torchvision(size, batch, n, step_precision)
        rows.append(row)
        loss_rows += losses
        print(markdown_table(HEADER, rows[-1:]), flush=True)
    demo_batch = load_config("demo").train.batch_size
    row, losses = against_plain_modules("demo preset 256x256", demo_batch, 3 * repeats, demo_model,
                                        synthetic_batch(demo_batch))
    rows.append(row)
    loss_rows += losses
    print(markdown_table(HEADER, rows[-1:]), flush=True)
    report.append(markdown_table(HEADER, rows))
    report.append("\nFirst-step losses (same weights, same batch):\n")
    report.append(markdown_table(["comparison", "loss", "fpn", "reference", "abs diff"], loss_rows))
    return "\n".join(report)
