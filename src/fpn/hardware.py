"""The machine a run is on: the device it computes on, what its CPU computes natively, the
autocast context every forward pass at a low precision runs under, and the machine line
benchmarks and reports print.

- ``resolve_device``: the device is chosen at run time, never assumed;
- ``CpuInfo`` / ``read_cpu_info``: the CPU's model, its ISA flags (``/proc/cpuinfo``) and the
  widest vector ISA PyTorch's kernels use; whether bf16 and int8 dot products are native.
  Which precision to run is chosen from these facts and the accuracy gates in
  ``fpn.model.precision`` (the gates are the model's business, not the machine's);
- ``autocast``: convolutions and fc layers at bf16 or fp16, written once for training, bf16
  inference and the benchmarks' peaks;
- ``describe_machine`` / ``load_line`` / ``machine_summary``: one line about the machine.

A neutral helper at the bottom of the package: it imports only ``fpn.errors``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fpn.errors import ConfigError


def resolve_device(name: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: this process's GPU (LOCAL_RANK under torchrun) when CUDA is present, else the CPU.

    A name torch does not know, or ``cuda`` on a machine without CUDA, is a ``ConfigError``.
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {name!r}: not a device (cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: CUDA is not available on this machine (use cpu or auto)")
    return device


# oneDNN's ISA names, lowest first; ONEDNN_MAX_CPU_ISA caps what its kernels use.
ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
               "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX512_CORE_AMX",
               "AVX10_1_512_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16", "AVX10_2_512",
               "AVX10_2_512_AMX_2")
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@dataclass(frozen=True)
class CpuInfo:
    """What the CPU computes natively, as the OS and PyTorch see it.

    Args:
        model_name: ``model name`` of ``/proc/cpuinfo``.
        flags: its ``flags`` (x86) or ``Features`` (Arm).
        capability: ``torch.backends.cpu.get_cpu_capability()``: the widest vector ISA PyTorch's
            own kernels use ("AVX2", "AVX512", "SVE256", ...).
        machine: ``platform.machine()`` ("x86_64", "aarch64").
        onednn_max_isa: the ``ONEDNN_MAX_CPU_ISA`` cap ("ALL" when unset).
    """

    model_name: str
    flags: frozenset[str]
    capability: str
    machine: str = "x86_64"
    onednn_max_isa: str = "ALL"

    @property
    def is_arm(self) -> bool:
        return self.machine in ("aarch64", "arm64")

    def _onednn_allows(self, isa: str) -> bool:
        cap = self.onednn_max_isa.upper()
        return cap == "ALL" or cap not in ONEDNN_ISAS or ONEDNN_ISAS.index(cap) >= ONEDNN_ISAS.index(isa)

    @property
    def native_bf16(self) -> bool:
        """bf16 dot products in hardware, and PyTorch's kernels allowed to use them."""
        if self.is_arm:
            return "bf16" in self.flags
        wide = self.capability == "AVX512"  # torch saw AVX-512 usable (the OS saves its registers)
        return wide and bool(self.flags & BF16_FLAGS) and self._onednn_allows("AVX512_CORE_BF16")

    @property
    def native_int8(self) -> bool:
        """int8 dot products (VNNI, AMX) for the x86 quantized kernels."""
        if self.is_arm or self.capability not in ("AVX2", "AVX512"):
            return False
        isa = "AVX2_VNNI" if self.flags & INT8_FLAGS == {"avx_vnni"} else "AVX512_CORE_VNNI"
        return bool(self.flags & INT8_FLAGS) and self._onednn_allows(isa)

    def describe(self) -> str:
        """One line: the model, PyTorch's ISA, and which of the flags that matter are present."""
        wanted = ["avx2", "avx512f", *sorted(BF16_FLAGS), *sorted(INT8_FLAGS), "bf16", "i8mm"]
        present = [f for f in wanted if f in self.flags]
        absent = [f for f in wanted[:-2] if f not in self.flags] if not self.is_arm else []
        cap = "" if self.onednn_max_isa == "ALL" else f", ONEDNN_MAX_CPU_ISA={self.onednn_max_isa}"
        return (f"{self.model_name or 'unknown CPU'} ({self.machine}), PyTorch ISA {self.capability}{cap}; "
                f"flags: {' '.join(present) or '-'}; absent: {' '.join(absent) or '-'}")


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first processor in a ``/proc/cpuinfo`` text (x86 or Arm)."""
    name, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not name:
            name = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
    return name, flags


@functools.cache
def read_cpu_info() -> CpuInfo:
    """This machine's ``CpuInfo``, read once per process."""
    try:
        with open("/proc/cpuinfo") as f:
            name, flags = parse_cpuinfo(f.read())
    except OSError:  # not Linux: nothing is known to be native
        name, flags = platform.processor(), frozenset()
    return CpuInfo(name, flags, torch.backends.cpu.get_cpu_capability(), platform.machine(),
                   os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL"))


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: a GPU with bf16 (Ampere and later), or a CPU with
    bf16 dot products that PyTorch's kernels may use."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and read_cpu_info().native_bf16


def autocast(device: torch.device | str, precision: str):
    """The forward pass at ``precision`` (resolved: fp32, bf16 or fp16): autocast runs convolutions
    and fc layers low while the weights (and in training the optimizer and the losses) stay fp32;
    fp32 is no autocast at all."""
    device_type = torch.device(device).type
    match precision:
        case "fp32":
            return contextlib.nullcontext()
        case "bf16":
            return torch.autocast(device_type, dtype=torch.bfloat16)
        case "fp16":
            return torch.autocast(device_type, dtype=torch.float16)
        case _:
            raise ValueError(f"autocast: precision {precision!r} is not fp32, bf16 or fp16")


def load_line() -> str:
    """The load average against the core count: how much else the machine was doing."""
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} logical cores"


def describe_machine() -> str:
    """The benchmarks' machine line: the CPU, its ISA and flags as PyTorch and /proc/cpuinfo see
    them, and the load."""
    return f"{read_cpu_info().describe()}; {load_line()}"


def machine_summary() -> str:
    """The machine a report was measured on, in one line: CPU, cores, threads, versions, date."""
    cpu = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return (f"{cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads), "
            f"torch {torch.__version__}, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")
