"""The GEMM and convolution peak this machine reaches per precision: the roofline a detector's
GFLOPS is read against (the machine line itself is ``fpn.hardware.describe_machine``).

The peaks are measured, not taken from a data sheet: a matrix product the size of the box
head's fc layers and a 3x3 convolution the size of the pyramid's output convolutions, run as
the detector runs them (channels-last; bf16 under ``fpn.hardware.autocast``, as the detector's
bf16 inference), median of a few calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fpn.bench.common import median_seconds
from fpn.hardware import autocast, read_cpu_info

# (rows, inner, columns) of the product: 512 RoIs through a 4096 -> 1024 fc layer.
GEMM_SHAPE = (512, 4096, 1024)
# (channels, height, width) of the 3x3 convolution, channels in = out: a P3 map at 512 px.
CONV_SHAPE = (256, 64, 64)


@dataclass
class Peak:
    """GFLOPS this machine reached on one GEMM and one convolution at one precision."""

    precision: str
    gemm_gflops: float
    conv_gflops: float


@torch.inference_mode()
def measure_peak(precision: str, repeats: int = 3) -> Peak:
    """The GFLOPS of ``GEMM_SHAPE`` and ``CONV_SHAPE`` at ``precision`` ("fp32" or "bf16")."""
    g = torch.Generator().manual_seed(0)
    rows, inner, cols = GEMM_SHAPE
    x, w = torch.randn(rows, inner, generator=g), torch.randn(cols, inner, generator=g)
    channels, h, wd = CONV_SHAPE
    feature = torch.randn(1, channels, h, wd, generator=g).contiguous(memory_format=torch.channels_last)
    kernel = torch.randn(channels, channels, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)
    with autocast("cpu", precision):
        gemm_s = median_seconds(lambda: F.linear(x, w), repeats)
        conv_s = median_seconds(lambda: F.conv2d(feature, kernel, padding=1), repeats)
    gemm_flops = 2 * rows * inner * cols
    conv_flops = 2 * channels * channels * 9 * h * wd
    return Peak(precision, gemm_flops / gemm_s / 1e9, conv_flops / conv_s / 1e9)


def roofline_line(peaks: list[Peak]) -> str:
    """One line: the measured peaks per precision, and whether bf16 is native here."""
    native = "native" if read_cpu_info().native_bf16 else "emulated: this CPU has no bf16 dot products"
    parts = [f"{p.precision} GEMM {p.gemm_gflops:.0f} / conv {p.conv_gflops:.0f} GFLOPS"
             + (f" ({native})" if p.precision == "bf16" else "") for p in peaks]
    return (f"measured peak ({GEMM_SHAPE[0]}x{GEMM_SHAPE[1]}x{GEMM_SHAPE[2]} GEMM, 3x3 conv "
            f"{CONV_SHAPE[0]}->{CONV_SHAPE[0]} on {CONV_SHAPE[1]}x{CONV_SHAPE[2]}): " + "; ".join(parts))
