"""The speed paths' memory layout: channels-last only where every body channel count is a multiple
of 16, and the configuration that crashed oneDNN's AVX-512 kernels (issue 25) training to the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from fpn.config.files import load_config
from fpn.model.detector import FasterRCNN
from tests.conftest import COCO_REAL, coco_real_subset

SMALL = ["model.backbone.depth=18", "model.backbone.norm=bn", "model.backbone.freeze_at=0",
         "model.roi_heads.fc_dim=32", "model.input.min_size_train=[64]", "model.input.min_size_test=64",
         "model.input.max_size=64", "model.roi_heads.num_classes=2"]


def _conv_input_formats(model: FasterRCNN, training: bool) -> list[torch.memory_format]:
    """The memory format of the input of every Conv2d module the backbone runs, in call order
    (norm: bn, so every convolution of the bottom-up pathway runs as a module, in training and in
    the folded inference copy alike)."""
    formats = []

    def record(module, args):
        if isinstance(module, torch.nn.Conv2d):
            x = args[0]
            formats.append(torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
                           and not x.is_contiguous() else torch.contiguous_format)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        model.train(training)
        batch, _ = model.preprocess([torch.rand(3, 64, 48)])
        with torch.no_grad():
            model.features(batch.tensor)
    finally:
        handle.remove()
    return formats


@pytest.mark.parametrize(("width", "channels", "expected"), [
    (8, 32, torch.contiguous_format),     # the stem and res2 have 8 channels: half an AVX-512 vector
    (16, 32, torch.channels_last),        # every count a multiple of 16
    (16, 24, torch.contiguous_format),    # the pyramid's d = 24 is not
])
def test_the_first_convolution_receives_the_layout_the_config_allows(width, channels, expected):
    overrides = [*SMALL, f"model.backbone.width={width}", f"model.neck.channels={channels}"]
    model = FasterRCNN(load_config(None, overrides).model)
    assert model.memory_format == expected
    for training in (True, False):  # the training fast path and the folded inference copy
        formats = _conv_input_formats(model, training)
        assert formats, "no convolution ran"
        assert formats[0] == expected, f"training={training}: the stem's conv received {formats[0]}"
        assert set(formats) == {expected}, f"training={training}: mixed layouts {set(formats)}"


def test_the_layout_follows_the_config_not_the_host():
    """The same config gives the same choice whatever oneDNN may use: it reads no CPU flags."""
    cfg = load_config("demo").model
    assert FasterRCNN(cfg).memory_format == torch.channels_last  # the demo preset: width 16, d = 64
    cfg.backbone.width = 8
    assert FasterRCNN(cfg).memory_format == torch.contiguous_format
    cfg.backbone.width, cfg.rpn.conv_channels = 16, 40
    assert FasterRCNN(cfg).memory_format == torch.contiguous_format


def _has_avx512f() -> bool:
    try:
        return "avx512f" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


def _photos(tmp_path: Path, count: int) -> tuple[Path, Path]:
    """``count`` photos of coco-real-160, or where it is absent, random images of COCO's sizes
    (640x480 and 480x640) with a few boxes each."""
    if COCO_REAL.is_dir():
        return coco_real_subset(tmp_path, count)
    g = torch.Generator().manual_seed(0)
    folder = tmp_path / "images"
    folder.mkdir()
    images, annotations = [], []
    for i in range(count):
        width, height = (640, 480) if i % 2 else (480, 640)
        pixels = (torch.rand(height, width, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{i}.jpg")
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "width": width, "height": height})
        annotations += [{"id": 10 * i + k, "image_id": i + 1, "category_id": 1 + k % 2, "iscrowd": 0,
                         "bbox": [40.0 * k + 10, 30.0 * k + 20, 120.0, 90.0], "area": 10800.0}
                        for k in range(3)]
    ann_file = tmp_path / "annotations.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations,
                                    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    return folder, ann_file


def _train_in_a_subprocess(tmp_path: Path, width: int, isa: str) -> subprocess.CompletedProcess:
    """The command of issue 25 at backbone ``width``, 2 steps on 8 photos, oneDNN capped at ``isa``,
    on one thread (with two, the corrupted kernel may spin instead of crashing)."""
    images, annotations = _photos(tmp_path, 8)
    command = [sys.executable, "-m", "fpn", "--quiet", "train", "--config", "demo", "--no-eval",
               f"model.backbone.width={width}", "model.neck.channels=32", "model.roi_heads.fc_dim=64",
               "train.max_iter=2", "train.device=cpu", "data.num_workers=0",
               f"data.train_images={images}", f"data.train_annotations={annotations}",
               f"data.val_images={images}", f"data.val_annotations={annotations}",
               "--output", str(tmp_path / "run")]
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": isa, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(not _has_avx512f(), reason="the CPU has no AVX-512 (no avx512f in /proc/cpuinfo)")
def test_the_width_8_training_step_that_crashed_oneDNN_on_avx512_exits_0(tmp_path):
    """Issue 25, point 1: this command exited 139 in the first backward pass with oneDNN's AVX-512
    kernels (it passed with ONEDNN_MAX_CPU_ISA=AVX2); with the layout guard it trains to the end."""
    result = _train_in_a_subprocess(tmp_path, 8, "AVX512_CORE")
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    assert (tmp_path / "run" / "checkpoints" / "step_0000002").is_dir()


def test_the_width_4_training_step_that_crashes_oneDNN_on_avx2_exits_0(tmp_path):
    """The same fault one vector width down, reproduced on an AVX2 host: at width 4 the 1x1 stride-2
    shortcut of res3 has 4 input channels, fewer than AVX2's 8 floats, and its channels-last
    weight gradient (jit_1x1:avx2) wrote out of bounds (exit 139 or a hang before the guard;
    docs/upstream/onednn_avx512_channels_last.md). With the guard it runs in the plain layout."""
    result = _train_in_a_subprocess(tmp_path, 4, "AVX2")
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    assert (tmp_path / "run" / "checkpoints" / "step_0000002").is_dir()
