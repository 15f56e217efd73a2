"""Inference speed against torchvision, measured in one process on identical weights and inputs.

``fpn bench`` (or ``python benchmarks/inference.py``) prints the machine (CPU, ISA, flags, load,
the measured GEMM / convolution peak per precision); then for each input our latency,
torchvision's fp32 latency, their ratio, the GFLOPS we achieve (and the fraction of the peak),
peak memory growth, and the largest difference between the two detectors' outputs; the same at
each precision (``--precision``) with the box AP it gives on the demo run; then how our
latency scales with image size and with the number of proposals.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision

from fpn.bench.common import PeakRSS, count_flops, markdown_table, median_seconds
from fpn.bench.reference import fpn_twin, torchvision_detector
from fpn.bench.roofline import Peak, measure_peak, roofline_line
from fpn.hardware import describe_machine, load_line
from fpn.model.precision import resolve_precision, with_precision
from fpn.output_comparison import output_difference

# torchvision's weights with one class raised (see reference.DETECTABLE_CLASS_BIAS).
DETECTABLE_CLASS = 1
LOW_PRECISIONS = ("bf16", "int8")


@dataclass
class Row:
    name: str
    ours_s: float
    reference_s: float | None = None
    gflops: float | None = None
    peak_mib: float | None = None
    box_diff: float | None = None
    score_diff: float | None = None
    peak_gflops: float | None = None  # the conv peak of this row's precision on this machine

    def cells(self) -> list[str]:
        def fmt(value: float | None, spec: str) -> str:
            return "-" if value is None else format(value, spec)

        ratio = self.ours_s / self.reference_s if self.reference_s else None
        of_peak = self.gflops / self.peak_gflops if self.gflops and self.peak_gflops else None
        return [self.name, fmt(self.ours_s, ".3f"), fmt(self.reference_s, ".3f"), fmt(ratio, ".2f"),
                fmt(self.gflops, ".0f"), fmt(of_peak, ".0%"), fmt(self.peak_mib, ".0f"),
                fmt(self.box_diff, ".4f"), fmt(self.score_diff, ".1e")]


HEADER = ["input", "ours s", "torchvision fp32 s", "ratio", "GFLOPS", "of conv peak", "peak MiB",
          "max box diff px", "max score diff"]


def compare(reference, ours, images: list[torch.Tensor], name: str, repeats: int,
            with_flops: bool = True, reference_seconds: float | None = None,
            peak_gflops: float | None = None) -> Row:
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
    return Row(name, our_s, ref_s, gflops, mem.growth, box_diff, score_diff, peak_gflops)


def _onnx_rows(reference, ours, chosen: dict[str, list[torch.Tensor]], repeats: int,
               reference_seconds: dict[str, float], rows: list[list[str]]) -> str:
    """Rows for our exported graph under ONNX Runtime (``fpn export``); a note if it cannot run."""
    import tempfile

    from fpn.errors import ExportError
    from fpn.export import OnnxDetector, export_onnx

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


def _openvino_rows(reference, ours, chosen: dict[str, list[torch.Tensor]], precisions: list[str],
                   repeats: int, reference_seconds: dict[str, float], rows: list[list[str]]) -> str:
    """Rows for the same graph compiled by OpenVINO (``fpn.export_openvino``), fp32 on every input
    and int8 (NNCF, calibrated as the PyTorch int8 rows) on the largest; a note if it cannot run."""
    from fpn.errors import MissingExtraError
    from fpn.export_openvino import OpenVinoDetector, to_openvino

    wanted = ["fp32", *(["int8"] if "int8" in precisions else [])]
    for precision in wanted:
        try:
            model = OpenVinoDetector(to_openvino(ours, precision, calibration_inputs()),
                                     threads=torch.get_num_threads(), precision=precision)
        except MissingExtraError as error:
            return f"OpenVINO rows skipped: {error}"
        for name, images in chosen.items():
            if precision == "int8" and name != next(iter(chosen)):
                continue
            rows.append(compare(reference, model, images, f"{name}, OpenVINO {precision}", repeats,
                                with_flops=False, reference_seconds=reference_seconds[name]).cells())
            print(markdown_table(HEADER, rows[-1:]), flush=True)
    return ""


def inputs() -> dict[str, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return {
        "1 x 800x1333": [torch.rand(3, 800, 1333, generator=g)],
        "1 x 512x512": [torch.rand(3, 512, 512, generator=g)],
        "4 x 320x480": [torch.rand(3, 320, 480, generator=g) for _ in range(4)],
    }


def calibration_inputs() -> list[torch.Tensor]:
    """What the int8 rows calibrate on: two random images of the largest input's size."""
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, 800, 1333, generator=g) for _ in range(2)]


def precisions_to_run(requested: str, ours) -> list[str]:
    """The low precisions with rows: all of them, the one asked for, or the one ``auto`` picks."""
    if requested == "all":
        return list(LOW_PRECISIONS)
    if requested == "auto":
        requested = resolve_precision("auto", ours.cfg, ours.device).precision
    return [requested] if requested in LOW_PRECISIONS else []


def precision_rows(reference, ours, name: str, images: list[torch.Tensor], precisions: list[str],
                   repeats: int, reference_seconds: float, peaks: dict[str, Peak]) -> list[list[str]]:
    """Our detector at each low precision on one input, against torchvision fp32."""
    rows = []
    for precision in precisions:
        model = with_precision(ours, precision, calibration_inputs)
        peak = peaks.get(precision)
        rows.append(compare(reference, model, images, f"{name}, {precision}", repeats,
                            with_flops=precision != "int8", reference_seconds=reference_seconds,
                            peak_gflops=peak.conv_gflops if peak else None).cells())
        print(markdown_table(HEADER, rows[-1:]), flush=True)
    return rows


def compile_row(reference, ours, name: str, images: list[torch.Tensor], repeats: int,
                reference_seconds: float) -> list[str]:
    """Our folded bottom-up pathway through torch.compile (its warm-up run pays the compilation)."""
    ours.compile_inference = True
    try:
        return compare(reference, ours, images, f"{name}, torch.compile", repeats, with_flops=False,
                       reference_seconds=reference_seconds).cells()
    finally:
        ours.compile_inference = False


def scaling_tables(reference, repeats: int, quick: bool) -> list[str]:
    """Our latency against image size and against the number of proposals, each setting a model
    built from its own config (no resize: the network sees these pixels)."""
    sizes = [(256, 256), (512, 512), (800, 800), (800, 1333)] if not quick else [(256, 256), (512, 512)]
    scale_rows = []
    for h, w in sizes:
        model = fpn_twin(reference, {"input": {"min_size_test": min(h, w), "max_size": max(h, w)}})
        image = [torch.rand(3, h, w)]
        with torch.inference_mode():
            seconds = median_seconds(lambda image=image, model=model: model(image), repeats)
        scale_rows.append([f"{h}x{w}", f"{h * w / 1e6:.2f}", f"{seconds:.3f}"])
    prop_rows = []
    side = 512 if quick else 800
    image = [torch.rand(3, side, side)]
    for count in ([100, 300, 1000] if not quick else [100, 1000]):
        model = fpn_twin(reference, {"input": {"min_size_test": side, "max_size": 1333},
                                     "rpn": {"post_nms_top_n_test": count}})
        with torch.inference_mode():
            seconds = median_seconds(lambda model=model: model(image), repeats)
        prop_rows.append([str(count), f"{seconds:.3f}"])
    return ["\nOur latency against image size (no resize: the network sees these pixels):\n",
            markdown_table(["image", "megapixels", "ours s"], scale_rows),
            f"\nOur latency against the number of proposals ({side}x{side}):\n",
            markdown_table(["proposals per image", "ours s"], prop_rows)]


def machine_lines(ours, precisions: list[str]) -> tuple[list[str], dict[str, Peak]]:
    """The machine, what ``auto`` picks on it, and the measured peaks (fp32 and the low ones)."""
    peaks = {p: measure_peak(p) for p in ("fp32", "bf16") if p == "fp32" or p in precisions}
    auto = resolve_precision("auto", ours.cfg, ours.device)
    lines = [f"machine: {describe_machine()}",
             f"precision auto on this machine: {auto.precision} ({auto.reason})",
             roofline_line(list(peaks.values())),
             f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} "
             "threads; ratios are to torchvision fp32 timed in this same run\n"]
    for line in lines:
        print(line, flush=True)
    return lines, peaks


def run(repeats: int = 3, quick: bool = False, threads: int | None = None, precision: str = "all",
        demo_run: Path | None = Path("runs/demo"), backend: str = "all") -> str:
    """The whole benchmark; returns the report as Markdown. ``backend``: which runtimes besides
    PyTorch get rows (all: ONNX Runtime and OpenVINO; none with ``quick``)."""
    if threads:
        torch.set_num_threads(threads)
    reference = torchvision_detector(detectable_class=DETECTABLE_CLASS)
    ours = fpn_twin(reference)
    precisions = precisions_to_run(precision, ours)
    report, peaks = machine_lines(ours, precisions)
    rows, reference_seconds = [], {}
    chosen = {name: images for name, images in inputs().items() if not quick or name == "1 x 512x512"}
    for name, images in chosen.items():
        row = compare(reference, ours, images, name, repeats, peak_gflops=peaks["fp32"].conv_gflops)
        reference_seconds[name] = row.reference_s
        rows.append(row.cells())
        print(markdown_table(HEADER, rows[-1:]), flush=True)
    name = "1 x 512x512" if quick else "1 x 800x1333"
    rows += precision_rows(reference, ours, name, chosen[name], precisions, repeats, reference_seconds[name],
                           peaks)
    if not quick:
        rows.append(compile_row(reference, ours, name, chosen[name], repeats, reference_seconds[name]))
        print(markdown_table(HEADER, rows[-1:]), flush=True)
    notes = []
    if quick:
        notes.append("ONNX Runtime and OpenVINO rows: without --quick")
    if not quick and backend in ("all", "onnxruntime"):
        notes.append(_onnx_rows(reference, ours, chosen, repeats, reference_seconds, rows))
    if not quick and backend in ("all", "openvino"):
        notes.append(_openvino_rows(reference, ours, chosen, precisions, repeats, reference_seconds, rows))
    report.append(markdown_table(HEADER, rows))
    report += [f"\n{note}" for note in notes if note]
    report += scaling_tables(reference, repeats, quick)
    if demo_run is not None:
        from fpn.bench.gates import demo_ap_table

        report += ["\nBox AP on the demo run at each precision (the accuracy gate, fpn.model.precision):\n",
                   demo_ap_table(demo_run, ["fp32", *precisions])]
    report.append(f"\nat the end: {load_line()}")
    return "\n".join(report)
