"""Inference speed against torchvision, measured in one process on identical weights and inputs.

``fpn bench`` (or ``python benchmarks/inference.py``) prints, for each input: our latency,
torchvision's, their ratio, the GFLOPS we achieve, peak memory growth, and the largest
difference between the two detectors' outputs; then how our latency scales with image size and
with the number of proposals. Timings are medians over repeats after a warm-up run; they are
only comparable within one run, on one machine.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torchvision.models.detection import FasterRCNN as TVFasterRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d

from fpn.detections import output_difference
from fpn.interop.torchvision import from_torchvision

# Raised logit of one class, so that a detector with random weights still scores some RoIs above
# the 0.05 threshold and the two implementations have detections to compare.
DETECTABLE_CLASS_BIAS = 6.0


def torchvision_reference(seed: int = 0) -> TVFasterRCNN:
    """torchvision's R50-FPN Faster R-CNN as published (FrozenBN), with seeded random weights.

    FrozenBN eps is 0, as torchvision sets it for its published COCO weights (docs/interop.md §8).
    One class's bias is raised so that random weights still produce detections to compare.
    """
    torch.manual_seed(seed)
    body = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    model = TVFasterRCNN(_resnet_fpn_extractor(body, 3), num_classes=91).eval()
    for module in model.modules():
        if isinstance(module, FrozenBatchNorm2d):
            module.eps = 0.0
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[1] += DETECTABLE_CLASS_BIAS
    return model


class PeakRSS:
    """Peak resident memory growth (MiB) of this process while the block runs (sampled)."""

    def __enter__(self):
        self.start = self.peak = _rss_mib()
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, _rss_mib())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, _rss_mib())

    @property
    def growth(self) -> float:
        return self.peak - self.start


def _rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20
    except OSError:
        return 0.0


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: allocations, kernel selection, the folded backbone, anchor caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_flops(fn: Callable[[], object]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


@dataclass
class Row:
    name: str
    ours_s: float
    reference_s: float | None = None
    gflops: float | None = None
    peak_mib: float | None = None
    box_diff: float | None = None
    score_diff: float | None = None

    def cells(self) -> list[str]:
        def fmt(value: float | None, spec: str) -> str:
            return "-" if value is None else format(value, spec)

        ratio = self.ours_s / self.reference_s if self.reference_s else None
        return [self.name, fmt(self.ours_s, ".3f"), fmt(self.reference_s, ".3f"), fmt(ratio, ".2f"),
                fmt(self.gflops, ".0f"), fmt(self.peak_mib, ".0f"), fmt(self.box_diff, ".4f"),
                fmt(self.score_diff, ".1e")]


HEADER = ["input", "ours s", "torchvision s", "ratio", "GFLOPS", "peak MiB", "max box diff px",
          "max score diff"]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def publish_report(report: str, output: Path | None) -> None:
    """Print a Markdown report and, when ``output`` is given, write it there too."""
    print("\n" + report)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(report + "\n")


def compare(reference, ours, images: list[torch.Tensor], name: str, repeats: int,
            with_flops: bool = True, reference_seconds: float | None = None) -> Row:
    """One table row. ``with_flops=False`` for quantized models (the flop counter's decompositions
    do not accept quantized tensors) and for ONNX Runtime (which the counter cannot see);
    ``reference_seconds`` reuses torchvision's time measured earlier in the same run."""
    with torch.inference_mode():
        ref_out = reference(images)
        our_out = ours(images)
        box_diff, score_diff, unmatched = output_difference(ref_out, our_out)
        total = sum(len(out["boxes"]) for out in ref_out)
        name += f" ({total - unmatched}/{total} matched)"
        flops = count_flops(lambda: ours(images)) if with_flops else None
        ref_s = reference_seconds or median_seconds(lambda: reference(images), repeats)
        with PeakRSS() as mem:
            our_s = median_seconds(lambda: ours(images), repeats)
    gflops = flops / our_s / 1e9 if flops is not None else None
    return Row(name, our_s, ref_s, gflops, mem.growth, box_diff, score_diff)


def _onnx_rows(reference, ours, chosen: dict[str, list[torch.Tensor]], repeats: int,
               reference_seconds: dict[str, float], rows: list[list[str]]) -> str:
    """Rows for our exported graph under ONNX Runtime (``fpn export``); a note if it cannot run."""
    import tempfile
    from pathlib import Path

    from fpn.export import ExportError, OnnxDetector, export_onnx

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(ours, Path(tmp) / "model.onnx")
            onnx_model = OnnxDetector(path, threads=torch.get_num_threads())
    except ExportError as error:  # the 'export' extra is not installed
        return f"ONNX Runtime rows skipped: {error}"
    for name, images in chosen.items():
        rows.append(compare(reference, onnx_model, images, f"{name}, ONNX Runtime", repeats, with_flops=False,
                            reference_seconds=reference_seconds[name]).cells())
        print(markdown_table(HEADER, rows[-1:]), flush=True)
    return ""


def inputs() -> dict[str, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return {
        "1 x 800x1333": [torch.rand(3, 800, 1333, generator=g)],
        "1 x 512x512": [torch.rand(3, 512, 512, generator=g)],
        "4 x 320x480": [torch.rand(3, 320, 480, generator=g) for _ in range(4)],
    }


def run(repeats: int = 3, quick: bool = False, threads: int | None = None) -> str:
    """The whole benchmark; returns the report as Markdown."""
    if threads:
        torch.set_num_threads(threads)
    reference = torchvision_reference()
    ours = from_torchvision(reference.state_dict())
    report = [f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
              f"{torch.get_num_threads()} threads, median of {repeats} after a warm-up\n"]
    rows, reference_seconds = [], {}
    chosen = {name: images for name, images in inputs().items() if not quick or name == "1 x 512x512"}
    for name, images in chosen.items():
        row = compare(reference, ours, images, name, repeats)
        reference_seconds[name] = row.reference_s
        rows.append(row.cells())
        print(markdown_table(HEADER, rows[-1:]), flush=True)
    if not quick:  # the optional int8 pyramid (fpn.model.quantize), on the largest input
        from fpn.model.quantize import quantize_pyramid

        g = torch.Generator().manual_seed(1)
        int8 = quantize_pyramid(ours, [torch.rand(3, 800, 1333, generator=g) for _ in range(2)])
        name = "1 x 800x1333"
        rows.append(compare(reference, int8, chosen[name], f"{name}, int8 pyramid", repeats, with_flops=False,
                            reference_seconds=reference_seconds[name]).cells())
        print(markdown_table(HEADER, rows[-1:]), flush=True)
        ours.compile_inference = True  # the warm-up run of median_seconds pays the compilation
        rows.append(compare(reference, ours, chosen[name], f"{name}, torch.compile", repeats,
                            with_flops=False,
                            reference_seconds=reference_seconds[name]).cells())
        print(markdown_table(HEADER, rows[-1:]), flush=True)
        ours.compile_inference = False
    onnx_note = _onnx_rows(reference, ours, chosen, repeats, reference_seconds, rows)
    report.append(markdown_table(HEADER, rows))
    if onnx_note:
        report.append(f"\n{onnx_note}")
    report.append("\nOur latency against image size (no resize: the network sees these pixels):\n")
    sizes = [(256, 256), (512, 512), (800, 800), (800, 1333)] if not quick else [(256, 256), (512, 512)]
    scale_rows = []
    for h, w in sizes:
        ours.cfg.input.min_size_test, ours.cfg.input.max_size = min(h, w), max(h, w)
        image = [torch.rand(3, h, w)]
        with torch.inference_mode():
            seconds = median_seconds(lambda image=image: ours(image), repeats)
        scale_rows.append([f"{h}x{w}", f"{h * w / 1e6:.2f}", f"{seconds:.3f}"])
    report.append(markdown_table(["image", "megapixels", "ours s"], scale_rows))
    report.append("\nOur latency against the number of proposals (800x800):\n")
    ours.cfg.input.min_size_test, ours.cfg.input.max_size = 800, 1333
    image = [torch.rand(3, 800, 800)]
    prop_rows = []
    for count in ([100, 300, 1000] if not quick else [100, 1000]):
        ours.cfg.rpn.post_nms_top_n_test = count
        with torch.inference_mode():
            seconds = median_seconds(lambda: ours(image), repeats)
        prop_rows.append([str(count), f"{seconds:.3f}"])
    report.append(markdown_table(["proposals per image", "ours s"], prop_rows))
    return "\n".join(report)
