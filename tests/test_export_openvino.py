"""The OpenVINO backend (``fpn.export_openvino``): fp32 gives eager PyTorch's detections on real
photos; int8 (NNCF) keeps a trained run's AP within the int8 gate, or ``auto`` refuses it; the
command line writes IR files and refuses what the backend cannot run."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch

from fpn.cli import main
from tests.conftest import COCO_REAL, TINY_MODEL, assert_same_detections, make_untrained_run

pytest.importorskip("openvino", reason="the openvino extra is not installed (pip install 'fpn[openvino]')")
pytest.importorskip("onnxscript", reason="the OpenVINO backend converts the ONNX export (the export extra)")

needs_photos = pytest.mark.skipif(not (COCO_REAL / "images").is_dir(),
                                  reason="coco-real-160 not present beside the repository")


def _photos(count: int) -> list[torch.Tensor]:
    from fpn.bench.gates import real_photos

    return real_photos(COCO_REAL / "images", count)


@pytest.mark.slow
@needs_photos
def test_openvino_fp32_detections_equal_eager_on_real_photos():
    """R50-FPN with torchvision's layout converted (seeded random weights, one class's logit raised
    so that there are detections), at 320 px: every eager detection has an OpenVINO one of the
    same label within 1 px and 1e-3 in score, on three COCO photos."""
    from fpn.api import Detector
    from fpn.bench.reference import fpn_twin, torchvision_detector

    model = fpn_twin(torchvision_detector(size=(320, 427), detectable_class=1))
    detector = Detector(model, "cpu", backend="openvino", precision="fp32")
    assert detector.precision == "fp32" and detector.backend == "openvino"
    assert detector.network.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
    for photo in _photos(3):
        with torch.inference_mode():
            want = model([photo])[0]
        got = detector.network([photo])[0]
        assert_same_detections(want, got, box_tol=1.0, score_tol=1e-3, cut_tol=1e-2)
    eager = Detector(model, "cpu", precision="fp32")(photo)  # the API's Detections, both backends
    openvino = detector(photo)
    def as_dict(found):
        return {"boxes": found.boxes, "scores": found.scores, "labels": found.labels}

    assert_same_detections(as_dict(eager), as_dict(openvino), box_tol=1.0, score_tol=1e-3, cut_tol=1e-2)
    assert openvino.image_size == eager.image_size == tuple(photo.shape[-2:])
    assert {name for name in openvino.names} <= {name for name in eager.names}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """The tiny detector fitted to 8 synthetic images (the fixture of tests/bench/test_gates.py,
    which measures the PyTorch int8 path's gate the same way)."""
    from fpn.config.files import load_config
    from fpn.data.synthetic import generate
    from fpn.jobs.training import run_train
    from tests.conftest import data_overrides

    root = tmp_path_factory.mktemp("fit8")
    generate(root, num_train=8, num_val=1, image_size=96, seed=3, progress=False)
    data = [o.replace("/val/", "/train/") for o in data_overrides(root)]
    cfg = load_config(None, [*TINY_MODEL, *data, "data.horizontal_flip=0", "train.batch_size=4",
                             "train.base_batch_size=4", "train.max_iter=150", "train.warmup_iters=10",
                             "train.lr_steps=[120]", "train.checkpoint_period=1000", "train.device=cpu"])
    run_train(cfg, root / "run", progress=False, evaluate=False)
    return root / "run"


def _ap_and_detections(run, precision: str, backend: str) -> tuple[float, list[dict], str]:
    from fpn.jobs.datasets import dataset_for
    from fpn.jobs.evaluation import evaluate_model, open_run

    cfg, detector, _ = open_run(run, precision=precision, backend=backend)
    dataset = dataset_for(cfg, "val")
    result = evaluate_model(detector.model, dataset, cfg, progress=False, network=detector.network)
    with torch.inference_mode():
        outputs = [detector.network([dataset[i][0]])[0] for i in range(len(dataset))]
    return 100 * result.metrics["AP"], outputs, detector.precision


@pytest.mark.slow
def test_openvino_int8_passes_the_int8_gate_or_auto_refuses_it(trained_run):
    """The PyTorch int8 path's gate (tests/bench/test_gates.py: AP within 2 points of fp32 on
    the 8 images, 85% of fp32's confident detections kept) applied to OpenVINO int8 (NNCF,
    calibrated on the run's training images); ``auto`` under OpenVINO may pick int8 only if it
    passed (``fpn.export_openvino.GATES_PASSED``)."""
    from fpn.export_openvino import GATES_PASSED, choose_precision
    from fpn.hardware import CpuInfo
    from fpn.output_comparison import confident_matches
    from tests.bench.test_gates import AP_DROP_HERE, KEPT_HERE

    fp32_ap, fp32_out, _ = _ap_and_detections(trained_run, "fp32", "pytorch")
    ov_fp32_ap, _, _ = _ap_and_detections(trained_run, "fp32", "openvino")
    int8_ap, int8_out, chosen = _ap_and_detections(trained_run, "int8", "openvino")
    assert chosen == "int8"
    assert fp32_ap > 60, f"the model did not fit its images (AP {fp32_ap:.1f}): nothing to measure"
    assert abs(ov_fp32_ap - fp32_ap) < 0.1, f"OpenVINO fp32 AP {ov_fp32_ap:.1f}, eager {fp32_ap:.1f}"
    matched, total = confident_matches(fp32_out, int8_out, min_score=0.5, min_iou=0.9)
    assert total >= 20
    passed = fp32_ap - int8_ap <= AP_DROP_HERE["int8"] and matched >= KEPT_HERE["int8"] * total
    # The verdict is borderline and moves with the fitted model (failed: AP 79.1 against 82.4 fp32,
    # 26/27 kept; passed: 86.0 against 86.7, 27/28 kept, two runs on one host): the table may list
    # int8 only if every run passes, and never while a run fails.
    listed = "int8" in GATES_PASSED["fpn"]
    assert passed or not listed, (
        f"OpenVINO int8: AP {int8_ap:.1f} (fp32 {fp32_ap:.1f}), {matched}/{total} confident detections "
        "kept: the gate failed, but fpn.export_openvino.GATES_PASSED lists int8")
    from fpn.api import load_model

    model = load_model(trained_run)
    with pytest.MonkeyPatch.context() as patch:  # a CPU with VNNI: only the gate can stop int8
        vnni = CpuInfo("a VNNI CPU", frozenset({"avx2", "avx512f", "avx512_vnni"}), "AVX512")
        patch.setattr("fpn.export_openvino.read_cpu_info", lambda: vnni)
        auto = choose_precision("auto", model, can_calibrate=True).precision
    assert auto == ("int8" if listed else "fp32")  # auto follows the table of passed gates


def test_the_backend_refuses_what_it_cannot_run(tmp_path):
    """bf16, an unknown backend and int8 without calibration images: one-line errors, exit 2,
    before any conversion."""
    run = make_untrained_run(tmp_path / "run")
    photo = tmp_path / "p.png"
    from PIL import Image

    Image.new("RGB", (40, 30)).save(photo)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["predict", str(run), str(photo), "--output", str(tmp_path / "out"),
                     "--backend", "openvino", "--precision", "bf16"])
    assert code == 2 and "runs fp32 or int8" in err.getvalue() and "Traceback" not in err.getvalue()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["predict", str(run), str(photo), "--output", str(tmp_path / "out"),
                     "--backend", "openvino", "--colour-by", "level"])
    assert code == 2 and "pyramid level" in err.getvalue()
    from fpn.api import Detector
    from fpn.errors import ConfigError, PrecisionError

    with pytest.raises(PrecisionError, match="calibrat"):
        Detector(run, "cpu", backend="openvino", precision="int8", calibration=[])
    with pytest.raises(ConfigError, match="backend"):
        Detector(run, "cpu", backend="tensorrt")


@pytest.mark.slow
@needs_photos
def test_fpn_export_openvino_writes_ir_that_matches_eager(tmp_path):
    """``fpn export RUN --format openvino`` writes NAME.xml and NAME.bin (fp32 weights) whose
    detections, read back by ``OpenVinoDetector``, are eager's on a real photo."""
    from fpn.api import load_image, load_model
    from fpn.export_openvino import OpenVinoDetector

    run = make_untrained_run(tmp_path / "run", ["model.roi_heads.score_thresh=0.0"])
    photo = sorted((COCO_REAL / "images").iterdir())[0]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["export", str(run), "--format", "openvino", "--output", str(tmp_path / "m.xml"),
                     "--verify-image", str(photo)])
    assert code == 0
    assert (tmp_path / "m.bin").is_file() and "OpenVINO fp32 vs PyTorch on" in out.getvalue()
    model, image = load_model(run).eval(), load_image(photo)
    with torch.inference_mode():
        want = model([image])[0]
    got = OpenVinoDetector(tmp_path / "m.xml")([image])[0]
    # untrained: 100 scores close together; the two runtimes differ by ~1e-7, so a 1e-4 margin at the cut
    assert_same_detections(want, got, box_tol=1.0, score_tol=1e-3, cut_tol=1e-4)
    assert main(["export", str(run), "--format", "openvino", "--output", str(tmp_path / "m.onnx")]) == 2
