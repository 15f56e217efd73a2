"""OpenVINO beside torchvision fp32, eager, ONNX Runtime and int8, timed interleaved on one image.

Every runner is called once per round, round after round, so that a machine other jobs load
slows them alike and the ratios within a round stay comparable (``fpn bench`` times each row's
repeats back to back). Torchvision's R50-FPN with seeded random weights, converted to fpn; one
random 800x1216 image. Also prints what OpenVINO does by itself: its default inference precision
(bf16 where the CPU has AMX / AVX512-BF16) and how that run's detections compare. A runner that
fails to compile or run (OpenVINO under ``ONEDNN_MAX_CPU_ISA``, see docs/deployment.md) is
reported and left out. Used by docs/deployment.md's OpenVINO section.

    python benchmarks/openvino_interleaved.py [--repeats 3]
    ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/openvino_interleaved.py
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fpn.bench.common import PeakRSS, markdown_table
from fpn.bench.inference import DETECTABLE_CLASS, calibration_inputs
from fpn.bench.reference import fpn_twin, torchvision_detector
from fpn.export import OnnxDetector, export_onnx, run_graph
from fpn.export_openvino import OpenVinoDetector
from fpn.hardware import describe_machine, load_line
from fpn.model.precision import with_precision
from fpn.output_comparison import output_difference


def primitive_types(compiled) -> dict[str, int]:
    """How many nodes of a compiled OpenVINO model run each kernel kind (jit_avx2_f32, brgconv_...)."""
    counts = collections.Counter()
    for node in compiled.get_runtime_model().get_ops():
        info = node.get_rt_info()
        if "primitiveType" in info:
            counts[str(info["primitiveType"].value)] += 1
    return dict(counts.most_common(8))


def runners(onnx_path: Path, reference, ours, threads: int) -> dict:
    import nncf
    import openvino as ov

    calibration = [image.numpy() for image in calibration_inputs()]
    int8 = nncf.quantize(ov.convert_model(str(onnx_path)), nncf.Dataset(calibration),
                         subset_size=len(calibration))
    found = {
        "torchvision fp32": reference,
        "fpn eager fp32": ours,
        "fpn ONNX Runtime fp32": OnnxDetector(onnx_path, threads=threads),
        "fpn PyTorch int8 pyramid": with_precision(ours, "int8", calibration_inputs),
        "fpn OpenVINO fp32": OpenVinoDetector(ov.convert_model(str(onnx_path)), threads=threads),
        "fpn OpenVINO int8 (NNCF)": OpenVinoDetector(int8, threads=threads, precision="int8"),
    }
    print("OpenVINO fp32 (f32 hint) kernels:", primitive_types(found["fpn OpenVINO fp32"].compiled))
    try:  # what OpenVINO picks by itself
        default = ov.Core().compile_model(ov.convert_model(str(onnx_path)), "CPU",
                                          {"INFERENCE_NUM_THREADS": threads})
        print("OpenVINO default INFERENCE_PRECISION_HINT:", default.get_property("INFERENCE_PRECISION_HINT"))
        found["OpenVINO without the f32 hint"] = lambda images: run_graph(lambda a: default([a]), images)
    except RuntimeError as error:
        print("OpenVINO without the f32 hint fails to compile:", str(error).strip().splitlines()[-1])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds (default 3)")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    print("machine:", describe_machine())
    print("ONEDNN_MAX_CPU_ISA:", os.environ.get("ONEDNN_MAX_CPU_ISA", "unset"), f"threads: {threads}")
    reference = torchvision_detector(detectable_class=DETECTABLE_CLASS)
    ours = fpn_twin(reference)
    image = [torch.rand(3, 800, 1216, generator=torch.Generator().manual_seed(0))]
    with tempfile.TemporaryDirectory() as tmp:
        found = runners(export_onnx(ours, Path(tmp) / "model.onnx"), reference, ours, threads)
    times: dict[str, list[float]] = {}
    peaks: dict[str, float] = {}
    with torch.inference_mode():
        want = reference(image)
        for name, run in list(found.items()):
            try:
                got = run(image)  # the warm-up, and how far from torchvision
            except RuntimeError as error:
                print(f"{name} fails to run:", [line for line in str(error).splitlines() if line.strip()][-1])
                del found[name]
                continue
            box, score, unmatched = output_difference(want, got)
            total = len(want[0]["boxes"])
            print(f"{name}: {total - unmatched}/{total} of torchvision's detections, box {box:.4f} px, "
                  f"score {score:.1e}")
        for round_ in range(args.repeats):
            for name, run in found.items():
                with PeakRSS() as memory:
                    start = time.perf_counter()
                    run(image)
                    times.setdefault(name, []).append(time.perf_counter() - start)
                peaks[name] = max(peaks.get(name, 0.0), memory.growth)
            print(f"round {round_}:", {name: round(seconds[-1], 3) for name, seconds in times.items()})
    torchvision_s = statistics.median(times["torchvision fp32"])
    onnx_s = statistics.median(times["fpn ONNX Runtime fp32"])
    rows = [[name, f"{statistics.median(s):.3f}", f"{statistics.median(s) / torchvision_s:.2f}",
             f"{statistics.median(s) / onnx_s:.2f}", f"{peaks[name]:.0f}"] for name, s in times.items()]
    print(markdown_table(["1 x 800x1216", "median s", "/ torchvision fp32", "/ ONNX Runtime",
                          "peak MiB growth"], rows))
    print(load_line())


if __name__ == "__main__":
    main()
