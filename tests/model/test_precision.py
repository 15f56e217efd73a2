"""The precision the layers run in: the CPU read, the decision rule of ``auto`` on faked CPUs, and
every path forced on this host (fp32, bf16, int8), with the box maths kept in fp32."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fpn.api import Detector
from fpn.config.files import load_config
from fpn.errors import PrecisionError
from fpn.hardware import CpuInfo, parse_cpuinfo, read_cpu_info
from fpn.interop.torchvision import torchvision_config
from fpn.model.detector import FasterRCNN
from fpn.model.precision import GATES_PASSED, choose_precision, model_kind
from fpn.output_comparison import confident_matches
from tests.conftest import TINY_MODEL

X86 = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma bmi2 avx2"


def _cpu(name: str, extra_flags: str, capability: str, **kwargs) -> CpuInfo:
    return CpuInfo(name, frozenset(f"{X86} {extra_flags}".split()), capability, **kwargs)


# Flag sets as /proc/cpuinfo shows them on these CPUs (abridged to what matters).
CPUS = {
    "AMD Zen 3 (this kind of host)": _cpu("AMD EPYC 7B13", "", "AVX2"),
    "AMD Zen 4": _cpu("AMD EPYC 9B14", "avx512f avx512bw avx512_vnni avx512_bf16", "AVX512"),
    "Intel Sapphire Rapids": _cpu("Intel Xeon Platinum 8481C",
                                  "avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8", "AVX512"),
    "Intel Cascade Lake": _cpu("Intel Xeon Platinum 8280", "avx512f avx512_vnni", "AVX512"),
    "Intel Alder Lake": _cpu("12th Gen Intel Core i7-12700", "avx_vnni", "AVX2"),
    "Intel Skylake-SP": _cpu("Intel Xeon Gold 6148", "avx512f avx512bw", "AVX512"),
    "AWS Graviton3": CpuInfo("", frozenset("fp asimd sve bf16 i8mm".split()), "SVE256", machine="aarch64"),
}
# What auto picks on each, for a model trained by fpn that has images to calibrate int8 on.
EXPECTED_FOR_FPN = {"AMD Zen 3 (this kind of host)": "fp32", "AMD Zen 4": "bf16",
                    "Intel Sapphire Rapids": "bf16", "Intel Cascade Lake": "int8", "Intel Alder Lake": "int8",
                    "Intel Skylake-SP": "fp32", "AWS Graviton3": "bf16"}


def test_cpuinfo_is_parsed_on_x86_and_arm():
    x86 = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n"
    assert parse_cpuinfo(x86) == ("AMD EPYC 7B13", frozenset({"fpu", "avx2", "avx512_bf16"}))
    arm = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd bf16 i8mm\nCPU implementer\t: 0x41\n"
    assert parse_cpuinfo(arm) == ("", frozenset({"fp", "asimd", "bf16", "i8mm"}))


def test_this_host_is_read_as_torch_sees_it():
    cpu = read_cpu_info()
    assert cpu.capability == torch.backends.cpu.get_cpu_capability()
    assert read_cpu_info() is cpu  # once per process
    if cpu.machine == "x86_64" and cpu.capability in ("AVX2", "AVX512"):
        assert "avx2" in cpu.flags


@pytest.mark.parametrize("name", sorted(CPUS))
def test_auto_picks_the_native_precision(name):
    choice = choose_precision("auto", kind="fpn", device_type="cpu", cpu=CPUS[name])
    assert choice.precision == EXPECTED_FOR_FPN[name], choice.reason


def test_int8_needs_images_to_calibrate_on_and_a_passed_gate():
    cascade_lake = CPUS["Intel Cascade Lake"]
    assert choose_precision("auto", kind="fpn", device_type="cpu", cpu=cascade_lake,
                            can_calibrate=False).precision == "fp32"
    assert "int8" not in GATES_PASSED["torchvision"]  # its gate failed: docs/precision.md
    on_cascade_lake = choose_precision("auto", kind="torchvision", device_type="cpu", cpu=cascade_lake)
    assert on_cascade_lake.precision == "fp32"
    zen4 = CPUS["AMD Zen 4"]
    expected = "bf16" if "bf16" in GATES_PASSED["torchvision"] else "fp32"
    assert choose_precision("auto", kind="torchvision", device_type="cpu", cpu=zen4).precision == expected
    assert choose_precision("auto", kind="foreign", device_type="cpu", cpu=zen4).precision == "fp32"


def test_what_pytorch_cannot_use_is_not_native():
    zen4 = CPUS["AMD Zen 4"]
    # avx512_bf16 in the flags, but PyTorch runs AVX2 kernels (the OS does not save AVX-512 state)
    assert not dataclasses.replace(zen4, capability="AVX2").native_bf16
    # ONEDNN_MAX_CPU_ISA lowers what oneDNN may use: below AVX512_CORE_BF16 there are no bf16 kernels
    assert not dataclasses.replace(zen4, onednn_max_isa="AVX512_CORE_VNNI").native_bf16
    assert dataclasses.replace(zen4, onednn_max_isa="AVX512_CORE_VNNI").native_int8
    assert not dataclasses.replace(zen4, onednn_max_isa="AVX2").native_int8
    assert dataclasses.replace(zen4, onednn_max_isa="AVX512_CORE_AMX").native_bf16


@pytest.mark.parametrize("kind", sorted(GATES_PASSED))
@pytest.mark.parametrize("name", sorted(CPUS))
def test_auto_never_picks_a_precision_whose_gate_failed(kind, name):
    for device_type, cuda_bf16 in (("cpu", False), ("cuda", True), ("cuda", False)):
        choice = choose_precision("auto", kind=kind, device_type=device_type, cpu=CPUS[name],
                                  cuda_bf16=cuda_bf16)
        assert choice.precision in GATES_PASSED[kind], (kind, name, device_type, choice)


def test_a_precision_asked_for_is_kept_and_unknown_ones_refused():
    zen3 = CPUS["AMD Zen 3 (this kind of host)"]
    assert choose_precision("bf16", kind="fpn", device_type="cpu", cpu=zen3).precision == "bf16"
    with pytest.raises(PrecisionError, match="fp16"):
        choose_precision("fp16", kind="fpn", device_type="cpu", cpu=zen3)


def test_model_kinds_follow_the_weights_conventions():
    assert model_kind(load_config("demo").model) == "fpn"
    tv = torchvision_config({"roi_heads.box_predictor.cls_score.weight": torch.zeros(91, 1024)})
    assert model_kind(tv) == "torchvision"
    assert model_kind(load_config(None, ["model.input.pixel_scale=255"]).model) == "foreign"
    assert model_kind(load_config("segprop_demo").model) == "segments"


# --- every path on this host ------------------------------------------------------------------


def _tiny(*extra: str) -> FasterRCNN:
    torch.manual_seed(0)
    return FasterRCNN(load_config(None, [*TINY_MODEL, *extra]).model).eval()


def _images(count: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.rand(3, 96, 96, generator=g) for _ in range(count)]


class DtypeProbe:
    """Records the dtype a conv computed in and the dtypes box decoding and NMS were given."""

    def __init__(self, model: FasterRCNN, monkeypatch):
        self.seen: dict[str, set] = {"neck": set(), "fc": set(), "decode": set(), "nms": set()}
        model.neck.output["p3"].register_forward_hook(lambda m, a, out: self.seen["neck"].add(out.dtype))
        model.roi_heads.box_head.fc6.register_forward_hook(lambda m, a, out: self.seen["fc"].add(out.dtype))
        from fpn.model import boxes

        decode, nms = boxes.decode_boxes, boxes.batched_nms

        def decode_probe(deltas, reference, *args, **kwargs):
            self.seen["decode"] |= {deltas.dtype, reference.dtype}
            return decode(deltas, reference, *args, **kwargs)

        def nms_probe(boxes_xyxy, scores, *args, **kwargs):
            self.seen["nms"] |= {boxes_xyxy.dtype, scores.dtype}
            return nms(boxes_xyxy, scores, *args, **kwargs)

        monkeypatch.setattr(boxes, "decode_boxes", decode_probe)
        monkeypatch.setattr(boxes, "batched_nms", nms_probe)


def test_bf16_runs_the_layers_low_and_the_box_maths_in_fp32(monkeypatch):
    model = _tiny("model.roi_heads.score_thresh=0.0")
    images = _images()
    with torch.inference_mode():
        fp32 = model(images)
    probe = DtypeProbe(model, monkeypatch)
    detector = Detector(model, "cpu", precision="bf16")
    assert detector.precision == "bf16" and detector.network is not model
    with torch.inference_mode():
        bf16 = detector.network(images)
    assert probe.seen["neck"] == {torch.bfloat16} and probe.seen["fc"] == {torch.bfloat16}
    assert probe.seen["decode"] == {torch.float32} and probe.seen["nms"] == {torch.float32}
    for out in bf16:
        assert out["boxes"].dtype == out["scores"].dtype == torch.float32
    # an untrained model's scores are near-ties, so compare the ranking loosely: the boxes it
    # scores highest are (nearly) the same boxes, and scores agree to bf16's rounding
    matched, total = confident_matches(fp32, bf16, min_score=float(fp32[0]["scores"][9]), min_iou=0.9)
    assert matched >= 0.8 * total > 0
    assert (fp32[0]["scores"][:10] - bf16[0]["scores"][:10]).abs().max() < 0.02
    assert torch.equal(model(images)[0]["boxes"], fp32[0]["boxes"])  # the float model is unchanged


def test_fp32_is_the_model_itself_and_auto_is_fp32_without_native_low_precision():
    model = _tiny()
    assert Detector(model, "cpu", precision="fp32").network is model
    if not (read_cpu_info().native_bf16 or read_cpu_info().native_int8):
        detector = Detector(model, "cpu", precision="auto", calibration=_images())
        assert detector.precision == "fp32" and detector.network is model


@pytest.mark.skipif("x86" not in torch.backends.quantized.supported_engines, reason="no x86 int8 kernels")
def test_int8_is_calibrated_on_the_images_given_and_refused_without(monkeypatch):
    model = _tiny("model.backbone.norm=bn", "model.roi_heads.score_thresh=0.0")
    seen = []
    from fpn.model import quantize

    original = quantize.quantize_pyramid
    monkeypatch.setattr(quantize, "quantize_pyramid", lambda m, images: seen.append(len(images)) or original(
        m, images))
    detector = Detector(model, "cpu", precision="int8", calibration=_images(3))
    assert detector.precision == "int8" and seen == [3]
    with torch.inference_mode():
        out = detector(_images(1)[0])
    assert out["boxes"].dtype == torch.float32 and len(out["boxes"]) > 0
    with pytest.raises(PrecisionError, match="calibrat"):
        Detector(model, "cpu", precision="int8")


def test_segment_proposal_models_run_fp32_under_auto_and_refuse_bf16():
    model = _tiny("model.proposals=segments", "model.box_head=false")
    assert Detector(model, "cpu", precision="auto").precision == "fp32"
    with pytest.raises(PrecisionError, match="segment"):
        Detector(model, "cpu", precision="bf16")


# --- training ----------------------------------------------------------------------------------

def _train_losses(root, tmp_path, precision: str, steps: int) -> tuple[list[float], set, FasterRCNN]:
    """Per-step total losses of a short run at ``train.precision``, and the dtypes a conv computed in."""
    import json

    from fpn.engine.train import train
    from fpn.jobs.datasets import dataset_for, with_dataset_classes
    from fpn.jobs.training import new_model
    from tests.conftest import data_overrides

    cfg = load_config(None, [*TINY_MODEL, *data_overrides(root), "train.batch_size=2",
                             "train.base_batch_size=2", f"train.max_iter={steps}", "train.warmup_iters=0",
                             "train.log_period=1", "train.checkpoint_period=1000", "train.device=cpu",
                             f"train.precision={precision}"])
    train_set = dataset_for(cfg, "train")
    cfg = with_dataset_classes(cfg, train_set)
    model = new_model(cfg.model, cfg.train.seed)
    dtypes = set()
    model.neck.output["p3"].register_forward_hook(lambda m, a, out: dtypes.add(out.dtype))
    result = train(model, train_set, cfg, tmp_path / precision, progress=False)
    records = [json.loads(line) for line in (tmp_path / precision / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r], dtypes, result["model"]


@pytest.mark.slow
def test_bf16_training_tracks_fp32_with_fp32_master_weights(tiny_synth, tmp_path):
    steps = 8
    fp32, fp32_dtypes, _ = _train_losses(tiny_synth, tmp_path, "fp32", steps)
    bf16, bf16_dtypes, model = _train_losses(tiny_synth, tmp_path, "bf16", steps)
    assert fp32_dtypes == {torch.float32} and bf16_dtypes == {torch.bfloat16}  # the convs really ran low
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    assert len(fp32) == len(bf16) == steps
    # Step 1: the same weights and batch, only rounding differs (measured on a 2-core AMD EPYC,
    # emulated bf16: 0.01%). Later steps follow weights that rounding moved apart (measured: at most
    # 9% apart over the 8 steps, 3% on average); the bounds leave 2.5x that for other hosts' kernels.
    assert abs(bf16[0] - fp32[0]) <= 0.02 * fp32[0]
    relative = [abs(b - f) / f for b, f in zip(bf16, fp32, strict=True)]
    assert max(relative) < 0.25 and sum(relative) / steps < 0.08, relative
    assert bf16[-1] < bf16[0]  # and it learns


def test_old_train_amp_configs_still_load(tmp_path):
    from fpn.errors import ConfigError

    for amp, precision in (("off", "fp32"), ("bf16", "auto"), ("fp16", "fp16")):
        path = tmp_path / f"{amp}.yaml"
        path.write_text(f"train:\n  amp: {amp!r}\n  batch_size: 2\n")
        cfg = load_config(path)
        assert cfg.train.precision == precision and cfg.train.batch_size == 2
    assert load_config(None, ["train.amp=fp16"]).train.precision == "fp16"
    (tmp_path / "both.yaml").write_text("train: {amp: fp16, precision: bf16}\n")
    with pytest.raises(ConfigError, match="train.amp"):
        load_config(tmp_path / "both.yaml")
    import yaml

    from fpn.config.files import save_config

    save_config(load_config(tmp_path / "bf16.yaml"), tmp_path / "saved.yaml")
    saved = yaml.safe_load((tmp_path / "saved.yaml").read_text())["train"]
    assert saved["precision"] == "auto" and "amp" not in saved
