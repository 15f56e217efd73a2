"""The ``fpn`` command line: synth | train | eval | proposals | predict | demo | reproduce | convert | bench |
export | serve | presets.

Every command exits non-zero on failure. A user error (a missing file, a bad config value, a
corrupt dataset) prints one line naming the problem; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from fpn import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fpn", description="Feature Pyramid Networks for object detection.")
    parser.add_argument("--version", action="version", version=f"fpn {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("synth", help="generate the built-in synthetic benchmark (COCO format)")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--train", type=int, default=400, help="training images (default 400)")
    p.add_argument("--val", type=int, default=100, help="validation images (default 100)")
    p.add_argument("--pretrain", type=int, default=0,
                   help="images of a pre-training split (for fpn pretrain; default 0: none)")
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", default="shapes",
                   help="shapes (the demo's) or context (small objects whose class their surroundings "
                        "tell; docs/benchmarks.md)")

    p = sub.add_parser("train", help="train a detector")
    _add_config_args(p)
    p.add_argument("--output", type=Path, default=Path("runs/train"), help="run directory")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--no-eval", action="store_true", help="skip evaluation")
    p.add_argument("--init", action="append", default=[], type=Path, metavar="WEIGHTS",
                   help="start from these weights (repeatable; appended to train.init): an fpn run, a "
                        "torchvision/detectron2/mmdetection detector checkpoint, or a torchvision "
                        "ImageNet ResNet (.pth) for the backbone")

    p = sub.add_parser("pretrain", help="pre-train a backbone as a classifier of object crops "
                       "(a start for backbones without ImageNet weights; then fpn train --init RUN)")
    _add_config_args(p)
    p.add_argument("--output", type=Path, default=Path("runs/pretrain"), help="run directory")

    p = sub.add_parser("eval", help="box AP and proposal AR of a checkpoint (pycocotools)")
    p.add_argument("checkpoint", type=Path, help="run directory, checkpoint directory or weights file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. data.val_images=...")
    p.add_argument("--output", type=Path, default=None, help="where to write metrics (default: beside)")

    p = sub.add_parser("proposals", help="write the RPN proposals of a run for every image of a split")
    p.add_argument("checkpoint", type=Path, help="a run of the RPN alone or of Faster R-CNN")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="e.g. model.rpn.post_nms_top_n_test=2000")
    p.add_argument("--split", choices=["train", "val"], required=True)
    p.add_argument("--output", type=Path, required=True, help="the proposal file to write")

    p = sub.add_parser("predict", help="detect objects in images or folders")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("inputs", nargs="+", type=Path, help="images or folders")
    p.add_argument("--output", type=Path, default=Path("predictions"))
    p.add_argument("--score-thresh", type=float, default=0.3, help="drawing threshold")
    p.add_argument("--device", default="auto")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change the model's config, repeatable, e.g. --set model.input.test_scales=[600,800]")

    p = sub.add_parser("demo", help="synthesise data, train a CPU-sized FPN, evaluate, draw")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--output", type=Path, default=Path("runs/demo"))

    p = sub.add_parser("reproduce",
                       help="the paper's Tables 1, 2, 3 and 6 in miniature: train, evaluate, report")
    p.add_argument("--quick", action="store_true",
                   help="a step per row, on a tiny set (under a minute on a quiet 2-core machine)")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds for every row of Tables 1-3 (default: 3; 2 with --quick)")
    p.add_argument("--data-seed", type=int, default=0,
                   help="the benchmark generator's seed: another draw of the data (default 0)")
    p.add_argument("--rows", default="",
                   help="only these rows, comma-separated (e.g. table2_c,table2_d; default: all)")
    p.add_argument("--calibrate", default="", metavar="TABLE",
                   help="instead of the study: the learning-rate sweep and evaluation curves that choose "
                        "TABLE's schedule (1, 2 or 3), written to OUTPUT/calibration/")
    p.add_argument("--output", type=Path, default=Path("reports/reproduction"), help="where the report goes")
    p.add_argument("--work", type=Path, default=Path("runs/reproduction"),
                   help="data and training runs (a killed reproduction continues from here)")
    p.add_argument("--device", default="auto")

    p = sub.add_parser("convert",
                       help="torchvision, detectron2 or mmdetection Faster R-CNN weights -> an fpn run")
    p.add_argument("weights", type=Path,
                   help="a .pkl (detectron2 model zoo), .pth/.pt or .safetensors file "
                        "(no pickled code is run)")
    p.add_argument("--output", type=Path, required=True, help="run directory to write")
    p.add_argument("--from", dest="library", choices=["torchvision", "detectron2", "mmdetection"],
                   default=None, help="the library that wrote the weights (default: recognised by key names)")

    p = sub.add_parser("bench", help="inference (or training) speed against torchvision on identical weights")
    p.add_argument("--train", action="store_true",
                   help="training steps instead: R50-FPN at 512 and 800 px, and the demo preset")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs per row (default: 3, 5 with --train)")
    p.add_argument("--quick", action="store_true",
                   help="only the 512x512 input and small scaling tables (with --train: no 800 px row)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--output", type=Path, default=None, help="also write the Markdown report here")

    p = sub.add_parser("export", help="a checkpoint -> one ONNX graph (any image size) for ONNX Runtime")
    p.add_argument("checkpoint", type=Path, help="run directory, checkpoint directory or weights file")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--output", type=Path, required=True, help="the .onnx file to write")
    p.add_argument("--verify-image", type=Path, default=None,
                   help="an image for the ONNX Runtime vs PyTorch check (default: a random one)")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check")

    p = sub.add_parser(
        "serve", help="detection as a local web service and page (needs: pip install 'fpn[serve]')",
        description="Serve a detector over HTTP: POST /detect (multipart field 'image') returns JSON "
        "detections; GET /health; GET / is a page to drop an image on; the OpenAPI schema is at "
        "/openapi.json (docs at /docs). Requests queue for one model and are micro-batched.")
    p.add_argument("checkpoint", type=Path, help="run directory, checkpoint directory or weights file")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8080, help="default 8080")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes; each loads its own copy of the model, so memory multiplies "
                   "(default 1: one model, requests queued to it)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per worker (default: torch's choice, one per core; with several "
                   "workers give each cores/workers)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda when present)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change the model's config, repeatable, e.g. --set model.roi_heads.score_thresh=0.3")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds a request may wait and run before a 503 (default 30)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body (default 20 MiB)")
    p.add_argument("--max-megapixels", type=float, default=40.0,
                   help="largest image, checked from its header before decoding (default 40)")
    p.add_argument("--max-batch", type=int, default=4, help="images run in one forward at most (default 4)")
    p.add_argument("--max-queue", type=int, default=16,
                   help="images that may wait; more get a 503 'busy' (default 16)")

    sub.add_parser("presets", help="list the config presets")
    return parser


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="demo", help="a preset name or a YAML file (default: demo)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.base_lr=0.01")


def run(args: argparse.Namespace) -> int:
    progress = not args.quiet
    match args.command:
        case "synth":
            from fpn.data import synthetic

            stats = synthetic.generate(args.out_dir, num_train=args.train, num_val=args.val,
                                       num_pretrain=args.pretrain, image_size=args.image_size, seed=args.seed,
                                       variant=args.variant, progress=progress)
            print(f"wrote {args.out_dir}: {stats}")
        case "train":
            from fpn.config import load_config
            from fpn.engine import evaluate as ev
            from fpn.jobs.evaluation import skipped_note
            from fpn.jobs.training import run_train

            cfg = load_config(args.config, args.overrides)
            cfg.train.init = [*cfg.train.init, *map(str, args.init)]
            result = run_train(cfg, args.output, resume=args.resume, progress=progress,
                               evaluate=not args.no_eval)
            if result["metrics"]:
                print(ev.format_table(result["metrics"]))
                if "voc_table" in result["metrics"]:
                    print("Pascal VOC AP at IoU 0.5 (difficult objects ignored):\n"
                          + result["metrics"]["voc_table"])
                if skipped_note(result["metrics"]):
                    print(skipped_note(result["metrics"]))
            print(f"trained {result['step']} steps in {result['seconds'] / 60:.1f} min; run in {args.output}")
        case "pretrain":
            from fpn.config import load_config
            from fpn.jobs.pretraining import describe, run_pretrain

            result = run_pretrain(load_config(args.config, args.overrides), args.output, progress=progress)
            print(f"{describe(result)}; backbone in {args.output} "
                  f"(use it with fpn train --init {args.output})")
        case "eval":
            _eval(args, progress)
        case "predict":
            from fpn.jobs.prediction import run_predict

            out = run_predict(args.checkpoint, args.inputs, args.output, score_thresh=args.score_thresh,
                              device=args.device, progress=progress, overrides=args.overrides)
            print(f"wrote {out / 'predictions.json'} and drawn images in {out / 'drawn'}")
        case "proposals":
            from fpn.jobs.proposals import run_proposals

            result = run_proposals(args.checkpoint, args.split, args.output, args.overrides,
                                   progress=progress)
            print(f"wrote {result['path']}: proposals for {result['images']} {args.split} images"
                  + (f" ({len(result['skipped'])} unreadable skipped)" if result["skipped"] else ""))
        case "demo":
            from fpn.jobs.demo import run_demo

            run_demo(args.output, overrides=args.overrides, progress=progress)
        case "reproduce":
            if args.calibrate:
                from fpn.reproduction.calibrate import run_calibration

                run_calibration(args.calibrate, data_seed=args.data_seed, output=args.output, work=args.work,
                                device=args.device, quick=args.quick)
            else:
                from fpn.reproduction.study import run_reproduction

                run_reproduction(quick=args.quick, seeds=args.seeds, data_seed=args.data_seed,
                                 output=args.output, work=args.work, device=args.device,
                                 only=tuple(name for name in args.rows.split(",") if name))
        case "convert":
            _convert(args)
        case "bench":
            from fpn import benchmark, benchmark_train

            run = benchmark_train.run if args.train else benchmark.run
            repeats = args.repeats or (5 if args.train else 3)
            report = run(repeats=repeats, quick=args.quick, threads=args.threads)
            benchmark.publish_report(report, args.output)
        case "export":
            _export(args)
        case "serve":
            _serve(args)
        case "presets":
            from fpn.config import preset_descriptions

            width = max(map(len, descriptions := preset_descriptions()), default=0)
            print("\n".join(f"{name:<{width}}  {text}" for name, text in descriptions.items()))
        case _:
            build_parser().print_help()
    return 0


def _convert(args: argparse.Namespace) -> None:
    """Write a run whose config reproduces the source library's model (docs/interop.md)."""
    from fpn.config import Config, to_dict
    from fpn.engine.checkpoint import save_checkpoint
    from fpn.interop import convert_detector, describe, read_checkpoint

    foreign = convert_detector(read_checkpoint(args.weights), library=args.library)
    foreign.build()  # loads strictly: every tensor has its place
    path = save_checkpoint(args.output / "checkpoints", 0, foreign.state_dict, None,
                           to_dict(Config(model=foreign.cfg)))
    print(f"{describe(foreign)}; wrote {path}: use {args.output} with fpn predict / fpn eval")


def _export(args: argparse.Namespace) -> None:
    from fpn.api import Detector, load_image
    from fpn.export import export_onnx, verify

    model = Detector.from_checkpoint(args.checkpoint, "cpu").model
    image = load_image(args.verify_image) if args.verify_image and not args.no_verify else None
    print(f"exporting to {args.output} (tracing the eval path; about half a minute)", flush=True)
    path = export_onnx(model, args.output)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB): input 'image' (3, H, W) float in [0, 1], "
          "outputs 'boxes' (D, 4) xyxy in image pixels, 'scores' (D,), 'labels' (D,)")
    if not args.no_verify:
        what = args.verify_image or "a random 427x640 image"
        check = verify(model, path, image)
        print(f"ONNX Runtime vs PyTorch on {what}: {check['matched']}/{check['detections']} "
              f"detections matched, max box diff {check['max_box_diff_px']:.4f} px, "
              f"max score diff {check['max_score_diff']:.1e}")
        if check["matched"] != check["detections"] or check["onnx_detections"] != check["detections"]:
            raise ValueError(f"{path}: ONNX Runtime's detections differ from PyTorch's: {check}")
        if check["detections"] == 0:
            print("note: nothing was detected, so the check compared little; pass --verify-image "
                  "with a real photo")


def _serve(args: argparse.Namespace) -> None:
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise ValueError(f"fpn serve needs the serve extra: pip install 'fpn[serve]' ({err})") from None
    from fpn.serve.app import ServeSettings
    from fpn.serve.server import ServeOptions, serve

    limits = ServeSettings(max_upload_mb=args.max_upload_mb, max_megapixels=args.max_megapixels,
                           timeout=args.timeout, max_batch=args.max_batch, max_queue=args.max_queue)
    serve(ServeOptions(str(args.checkpoint), host=args.host, port=args.port, workers=args.workers,
                       device=args.device, threads=args.threads, overrides=args.overrides, limits=limits))


def _eval(args: argparse.Namespace, progress: bool) -> None:
    from fpn.engine import evaluate as ev
    from fpn.jobs.evaluation import run_eval, skipped_note

    metrics, out = run_eval(args.checkpoint, args.overrides, output=args.output, progress=progress)
    print(ev.format_table(metrics))
    if "voc_table" in metrics:
        print("Pascal VOC AP at IoU 0.5 (difficult objects ignored):\n" + metrics["voc_table"])
    if skipped_note(metrics):
        print(skipped_note(metrics))
    print(f"metrics in {out}")


# ConfigError, DatasetError, CheckpointError, ConversionError are ValueErrors; a non-finite loss
# is a FloatingPointError: all are reported in one line.
USER_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, ValueError, PermissionError,
                                                FloatingPointError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("fpn").setLevel(logging.DEBUG if args.debug else logging.INFO)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return run(args)
    except KeyboardInterrupt as err:
        print(f"fpn {args.command}: interrupted{': ' + str(err) if str(err) else ''}", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if args.debug:
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"fpn {args.command}: error: {message}", file=sys.stderr)
        return 2
    except Exception as err:
        if args.debug:
            raise
        print(f"fpn {args.command}: unexpected {type(err).__name__}: {err} (run with --debug for "
              "the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
