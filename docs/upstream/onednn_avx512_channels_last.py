"""Reproducer for an upstream report: float32 convolutions on channels-last tensors with 8 channels,
forward and backward, through oneDNN's AVX-512 kernels (PyTorch on the CPU).

Derived from a crash report (fpn issue 25: a training step exits with SIGSEGV or "double free or
corruption" in its backward pass on an AVX-512 host, with ONEDNN_MAX_CPU_ISA=AVX512_CORE and
AVX512_CORE_BF16, not with AVX2). It was written on an AVX2-only host, where every case passes:
it is NOT a confirmed reproduction. See onednn_avx512_channels_last.md beside it.

Pure PyTorch, no other dependency. The first 30 CASES are the distinct convolutions of the
failing training step (one step of a ResNet-18 at width 8 with a 32-channel feature pyramid and
its RPN head, a batch of 4 images padded to 256 x 256), recorded with ONEDNN_VERBOSE=1; the
first 5 are those with 8 channels, which exist only at width 8 (widths 16 and 32 did not crash).
Case 2 is the suspect; the last case is its analogue at width 4, which crashes on AVX2 hosts.

    python onednn_avx512_channels_last.py                     # each case in its own process
    ONEDNN_MAX_CPU_ISA=AVX512_CORE python onednn_avx512_channels_last.py
    python onednn_avx512_channels_last.py --sequence          # all cases in one process, in order
    ONEDNN_VERBOSE=1 python onednn_avx512_channels_last.py --case 1   # one case here (gdb, verbose)
    python onednn_avx512_channels_last.py --cases-from LOG    # the cases of a ONEDNN_VERBOSE=1 log

Each case runs forward, backward to the weight (and to the input where the training step needs
it) on a channels-last input ``--repeats`` times, and compares the results with PyTorch's own
kernels (oneDNN off, contiguous tensors). Exit status 0: every case ran and agreed.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import warnings

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore", message="TF32 acceleration")  # torch.backends.mkldnn.flags() says it

# (N, C_in, H, W, C_out, kernel, stride, padding, bias, grad to the input) as the training step ran
# them; the input channels-last, the weight contiguous (a parameter), as PyTorch's conv2d chose.
CASES = [
    (4, 3, 256, 256, 8, 7, 2, 3, False, False),  # stem: 7x7/2, 3 -> 8 (the images need no gradient)
    (4, 8, 64, 64, 8, 3, 1, 1, False, True),  # res2: 3x3, 8 -> 8
    (4, 8, 64, 64, 16, 1, 2, 0, False, True),  # res3 shortcut: 1x1/2, 8 -> 16
    (4, 8, 64, 64, 16, 3, 2, 1, False, True),  # res3 first conv: 3x3/2, 8 -> 16
    (4, 8, 64, 64, 32, 1, 1, 0, True, True),  # pyramid lateral on C2: 1x1, 8 -> 32
    (4, 16, 32, 32, 16, 3, 1, 1, False, True),
    (4, 16, 32, 32, 32, 1, 2, 0, False, True),
    (4, 16, 32, 32, 32, 3, 2, 1, False, True),
    (4, 32, 16, 16, 32, 3, 1, 1, False, True),
    (4, 32, 16, 16, 64, 1, 2, 0, False, True),
    (4, 32, 16, 16, 64, 3, 2, 1, False, True),
    (4, 64, 8, 8, 64, 3, 1, 1, False, True),
    (4, 64, 8, 8, 32, 1, 1, 0, True, True),
    (4, 32, 16, 16, 32, 1, 1, 0, True, True),
    (4, 16, 32, 32, 32, 1, 1, 0, True, True),
    (4, 32, 64, 64, 32, 3, 1, 1, True, True),
    (4, 32, 32, 32, 32, 3, 1, 1, True, True),
    (4, 32, 16, 16, 32, 3, 1, 1, True, True),
    (4, 32, 8, 8, 32, 3, 1, 1, True, True),
    (4, 32, 4, 4, 32, 3, 1, 1, True, True),
    (4, 32, 64, 64, 3, 1, 1, 0, True, True),
    (4, 32, 64, 64, 12, 1, 1, 0, True, True),
    (4, 32, 32, 32, 3, 1, 1, 0, True, True),
    (4, 32, 32, 32, 12, 1, 1, 0, True, True),
    (4, 32, 16, 16, 3, 1, 1, 0, True, True),
    (4, 32, 16, 16, 12, 1, 1, 0, True, True),
    (4, 32, 8, 8, 3, 1, 1, 0, True, True),
    (4, 32, 8, 8, 12, 1, 1, 0, True, True),
    (4, 32, 4, 4, 3, 1, 1, 0, True, True),
    (4, 32, 4, 4, 12, 1, 1, 0, True, True),
    # Not in the failing step: res3's shortcut at width 4, the same fault one vector width down
    # (4 input channels, fewer than AVX2's 8 floats); it crashes or hangs on an AVX2 host.
    (4, 4, 64, 64, 8, 1, 2, 0, False, True),
]
SUSPECT = 2  # res3's 1x1 stride-2 shortcut, 8 -> 16: see onednn_avx512_channels_last.md
AVX2_ANALOGUE = len(CASES) - 1


def tensors(case: tuple, seed: int) -> dict[str, torch.Tensor | None]:
    n, c_in, h, w, c_out, k, s, p, bias, _ = case
    g = torch.Generator().manual_seed(seed)
    out_h, out_w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    return {"x": torch.randn(n, c_in, h, w, generator=g),
            "weight": torch.randn(c_out, c_in, k, k, generator=g) * 0.1,
            "bias": torch.randn(c_out, generator=g) if bias else None,
            "grad_out": torch.randn(n, c_out, out_h, out_w, generator=g)}


def run(case: tuple, t: dict, channels_last: bool) -> dict[str, torch.Tensor]:
    """Forward and backward of one case; the output and the gradients."""
    *_, k, s, p, _, input_grad = case
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = t["x"].clone(memory_format=fmt).requires_grad_(input_grad)
    weight = t["weight"].clone().requires_grad_(True)
    bias = t["bias"].clone().requires_grad_(True) if t["bias"] is not None else None
    out = F.conv2d(x, weight, bias, stride=s, padding=p)
    out.backward(t["grad_out"].contiguous(memory_format=fmt))
    results = {"out": out.detach(), "grad_weight": weight.grad}
    if input_grad:
        results["grad_x"] = x.grad
    if bias is not None:
        results["grad_bias"] = bias.grad
    return results


def check(index: int, repeats: int) -> str:
    """Run case ``index`` ``repeats`` times in channels-last through oneDNN; compare with the reference."""
    case = CASES[index]
    t = tensors(case, seed=index)
    with torch.backends.mkldnn.flags(enabled=False):
        reference = run(case, t, channels_last=False)
    worst = 0.0
    for _ in range(repeats):
        got = run(case, t, channels_last=True)
        for name, value in reference.items():
            scale = value.abs().max().item() or 1.0
            worst = max(worst, (got[name] - value).abs().max().item() / scale)
    verdict = "ok" if worst < 1e-3 else "WRONG RESULTS"
    return f"{verdict} (largest difference {worst:.1e} of the reference's largest value)"


def describe(case: tuple) -> str:
    n, c_in, h, w, c_out, k, s, p, bias, input_grad = case
    return (f"N={n} {c_in:>2}->{c_out:<2} {h}x{w} k{k} s{s} p{p}" + (" bias" if bias else "")
            + ("" if input_grad else " (no grad to input)"))


def each_in_a_process(repeats: int, timeout: float) -> int:
    failed = 0
    print(f"torch {torch.__version__}, ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '(unset)')}, "
          f"{torch.get_num_threads()} threads")
    for index, case in enumerate(CASES):
        try:
            command = [sys.executable, __file__, "--case", str(index), "--repeats", str(repeats)]
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            result = None
        if result is None:
            status = f"HUNG: killed after {timeout:g} s"
        elif result.returncode < 0:
            status = f"CRASHED: {signal.Signals(-result.returncode).name}"
        elif result.returncode != 0:
            status = f"FAILED: exit {result.returncode} {(result.stderr.strip().splitlines() or [''])[-1]}"
        else:
            status = result.stdout.strip().splitlines()[-1]
        failed += not status.startswith("ok")
        print(f"case {index:>2} {describe(case):<42} {status}", flush=True)
    return 1 if failed else 0


def sequence(repeats: int) -> int:
    """Every case of the failing step in one process, in its order (a heap corruption may only
    surface at a later free); the AVX2 analogue is left out."""
    verdicts = [check(index, repeats) for index in range(AVX2_ANALOGUE)]
    for index, verdict in enumerate(verdicts):
        print(f"case {index:>2} {describe(CASES[index]):<42} {verdict}")
    return 0 if all(v.startswith("ok") for v in verdicts) else 1


VERBOSE_SHAPE = re.compile(r"mb(\d+)_ic(\d+)oc(\d+)_ih(\d+)oh\d+kh(\d+)sh(\d+)dh\d+ph(\d+)_iw(\d+)")


def cases_from_verbose_log(path: str) -> None:
    """Print the distinct convolutions of a ONEDNN_VERBOSE=1 log as CASES rows."""
    seen: dict[tuple, dict] = {}
    for line in open(path):
        fields = line.strip().split(",")
        if ",exec,cpu,convolution," not in line or len(fields) < 12:
            continue
        match = VERBOSE_SHAPE.search(line)
        if match is None:
            continue
        n, c_in, c_out, h, k, s, p, w = map(int, match.groups())
        entry = seen.setdefault((n, c_in, h, w, c_out, k, s, p), {"bias": False, "input_grad": False})
        entry["bias"] |= "bia:f32" in fields[8]
        entry["input_grad"] |= fields[7] == "backward_data"
    for (n, c_in, h, w, c_out, k, s, p), entry in seen.items():
        print(f"    ({n}, {c_in}, {h}, {w}, {c_out}, {k}, {s}, {p}, {entry['bias']}, {entry['input_grad']}),")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", type=int, default=None, help="run this case in this process")
    parser.add_argument("--sequence", action="store_true", help="every case in this one process")
    parser.add_argument("--repeats", type=int, default=20, help="runs of each case (default 20)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a case may take (default 120)")
    parser.add_argument("--cases-from", metavar="LOG", help="print the cases of a ONEDNN_VERBOSE=1 log")
    args = parser.parse_args()
    if args.cases_from:
        cases_from_verbose_log(args.cases_from)
        return 0
    if args.case is not None:
        verdict = check(args.case, args.repeats)
        print(verdict)
        return 0 if verdict.startswith("ok") else 1
    return sequence(args.repeats) if args.sequence else each_in_a_process(args.repeats, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
