"""The ``fpn`` command line: synth | train | eval | proposals | predict | browse | demo | reproduce |
convert | bench | export | serve | presets.

Each command is a parser (``_add_<command>``) and a handler (``_run_<command>``) that calls one job
(``fpn.jobs``) and prints what it did. Config overrides have one syntax on every command that
takes them: ``key=value`` items (``train.max_iter=2``, ``model.input.test_scales=[600,800]``)
anywhere after the command, before or after the options, or as ``--set key=value``.

Every command exits non-zero on failure. A user error (``fpn.errors.UserError``: a missing file, a
bad config value, a corrupt dataset) prints one line naming the problem and exits 2 (``--debug``
shows its traceback too); any other exception is a bug and prints its traceback (exit 1).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from fpn import __version__
from fpn.errors import ConfigError, MissingExtraError, UserError

# A config override: a dotted key under one of the config's sections, "=", a YAML value.
OVERRIDE = re.compile(r"^(model|data|train|pretrain)(\.[A-Za-z_]\w*)+=")
# The help text of each option several commands share, written once.
HELP = {
    "checkpoint": "run directory, checkpoint directory or weights file",
    "overrides": "config overrides, anywhere after the command (before or after options), e.g. {}",
    "set": "the same as a key=value item (repeatable)",
    "device": "cpu, cuda, cuda:N or auto (default: cuda when present)",
    "config": "a preset name (fpn presets lists them) or a YAML file (default: demo)",
    "colour_by": "box colours: one per class (default), or per pyramid level P2..P5 (Eq. 1)",
    "precision": "what the convolutions and fc layers compute in (default %(default)s; auto: bf16 or int8 "
                 "where this CPU computes them natively and their accuracy gate passed, else fp32)",
    "calibration": "images or folders int8 calibrates on (repeatable; default: the run's training images"
                   "{})",
    "backend": "what runs the model: pytorch (default) or openvino (fp32 or int8 on the CPU, converted at "
               "start; needs pip install 'fpn[openvino]')",
}


def _add_overrides(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument("overrides", nargs="*", metavar="key=value", help=HELP["overrides"].format(example))
    p.add_argument("--set", dest="set_overrides", action="append", default=[], metavar="key=value",
                   help=HELP["set"])


def _add_checkpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help=HELP["checkpoint"])


def _add_precision(p: argparse.ArgumentParser, *, default: str = "auto", fallback: str = "") -> None:
    """--precision and --calibration (``fpn.model.precision``); ``fallback``: what int8 calibrates on
    when the run's training images are not on disk."""
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "int8"], default=default,
                   help=HELP["precision"])
    p.add_argument("--calibration", action="append", type=Path, default=None, metavar="PATH",
                   help=HELP["calibration"].format(fallback))
    p.add_argument("--backend", choices=["pytorch", "openvino"], default="pytorch", help=HELP["backend"])


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="generate the built-in synthetic benchmark (COCO format)")
    p.add_argument("out_dir", type=Path, help="the folder to write train/ and val/ into")
    p.add_argument("--train", type=int, default=400, help="training images (default 400)")
    p.add_argument("--val", type=int, default=100, help="validation images (default 100)")
    p.add_argument("--image-size", type=int, default=512, help="side of the square images (default 512)")
    p.add_argument("--seed", type=int, default=0, help="the random stream (default 0)")
    p.add_argument("--pretrain", type=int, default=0,
                   help="images of a pre-training split (for fpn pretrain; default 0: none)")
    p.add_argument("--variant", default="shapes",
                   help="shapes (the demo's) or context (small objects whose class their surroundings "
                        "tell; docs/benchmarks.md)")
    p.add_argument("--geometry", default="scaled", choices=["scaled", "paper"],
                   help="object sizes: scaled with the image (default) or paper: in pixels like COCO's "
                        "objects at 800 px, 41/34/25%% small/medium/large (context variant only)")
    p.add_argument("--calibration", type=int, default=0,
                   help="images of a calibration split, to choose schedules on (default 0: none)")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a detector")
    p.add_argument("--config", default=None,
                   help="a preset name or a YAML file (default: demo; with --resume, the run's own config)")
    _add_overrides(p, "train.base_lr=0.01")
    p.add_argument("--output", type=Path, default=Path("runs/train"),
                   help="run directory (default: runs/train)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output from its last checkpoint, with its own config; "
                        "only the schedule's length (train.max_iter, train.lr_steps), periods, device and "
                        "evaluation settings may be changed")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a folder that holds a run: delete its checkpoints, metrics and "
                        "evaluations first")
    p.add_argument("--no-eval", action="store_true", help="skip evaluation")
    p.add_argument("--init", action="append", default=[], type=Path, metavar="WEIGHTS",
                   help="start from these weights (repeatable; appended to train.init): an fpn run, a "
                        "torchvision/detectron2/mmdetection detector checkpoint, or a torchvision "
                        "ImageNet ResNet (.pth) for the backbone")


def _add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="pre-train a backbone as a classifier of object crops "
                       "(a start for backbones without ImageNet weights; then fpn train --init RUN)")
    p.add_argument("--config", default="demo", help=HELP["config"])
    _add_overrides(p, "pretrain.iters=2000")
    p.add_argument("--output", type=Path, default=Path("runs/pretrain"),
                   help="run directory (default: runs/pretrain)")


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="box AP and proposal AR of a checkpoint (pycocotools)")
    _add_checkpoint(p)
    _add_overrides(p, "data.val_images=...")
    p.add_argument("--output", type=Path, default=None, help="where to write metrics (default: beside)")
    _add_precision(p, default="fp32")


def _add_proposals(sub) -> None:
    p = sub.add_parser("proposals", help="write the RPN proposals of a run for every image of a split")
    p.add_argument("checkpoint", type=Path, help="a run of the RPN alone or of Faster R-CNN")
    _add_overrides(p, "model.rpn.post_nms_top_n_test=2000")
    p.add_argument("--split", choices=["train", "val"], required=True,
                   help="the split whose images get proposals")
    p.add_argument("--output", type=Path, required=True, help="the proposal file to write")


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict", help="detect objects in images, folders or videos",
        description="Write predictions.json (COCO-style: bbox x, y, width, height), predictions.csv "
        "(x1, y1, x2, y2) and drawn copies under DIR/drawn/, named after the inputs' paths relative to "
        "the folder they share; a video gives an annotated DIR/drawn/<path>.mp4 (needs the video extra).")
    _add_checkpoint(p)
    p.add_argument("inputs", nargs="+", type=Path, help="images, videos or folders of them")
    _add_overrides(p, "model.input.test_scales=[600,800]")
    p.add_argument("--output", type=Path, default=Path("predictions"),
                   help="folder for predictions.json, predictions.csv and the drawn images "
                        "(default: predictions)")
    p.add_argument("--score-thresh", type=float, default=0.5,
                   help="keep detections scored at least this, in predictions.json, predictions.csv and the "
                        "drawings alike (default 0.5; 0.05: all the detections the evaluation scores)")
    p.add_argument("--colour-by", choices=["class", "level"], default="class", help=HELP["colour_by"])
    p.add_argument("--device", default="auto", help=HELP["device"])
    _add_precision(p, fallback=", else the input images")


def _add_browse(sub) -> None:
    p = sub.add_parser(
        "browse", help="look at a dataset before training: ground truth drawn, class counts, object sizes, "
                       "the share of objects per pyramid level",
        description="Draws the ground truth of a few images into DIR/gt/ and writes class_counts.png, "
        "object_sizes.png (COCO's small/medium/large buckets), levels.png (the pyramid level Eq. 1 gives "
        "each object under --config) and summary.json. DATA: a COCO annotation file, a folder with "
        "annotations.json (and images/), an `fpn synth` folder, a Pascal VOC root or a YOLO folder "
        "(data.yaml or classes.txt beside labels/); none: the config's data. --check: list every problem "
        "of the dataset instead (exit 1 if any).")
    p.add_argument("data", type=Path, nargs="?", default=None, metavar="DATA",
                   help="the dataset to look at (default: the config's data)")
    p.add_argument("--output", type=Path, default=None, help="where the pictures and charts go")
    p.add_argument("--check", action="store_true",
                   help="only check: every record a command would refuse or skip, counted by kind with the "
                        "first examples (exit 1 if any); writes nothing")
    p.add_argument("--images", type=Path, default=None,
                   help="the image folder of a COCO annotation file (default: images/ beside it, or its "
                        "folder)")
    p.add_argument("--split", default="train", help="VOC's ImageSets/Main list, or the split of an "
                   "`fpn synth` folder or of the config's data (default train)")
    p.add_argument("--config", default="demo",
                   help="preset or YAML whose model the levels are for (default demo)")
    p.add_argument("--num-images", type=int, default=16, help="images drawn (default 16)")
    p.add_argument("--colour-by", choices=["class", "level"], default="class", help=HELP["colour_by"])


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="synthesise data, train a CPU-sized FPN, evaluate, draw")
    _add_overrides(p, "train.max_iter=300")
    p.add_argument("--output", type=Path, default=Path("runs/demo"),
                   help="run directory (default: runs/demo)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over instead of resuming the run in --output (deletes its checkpoints)")


def _add_reproduce(sub) -> None:
    p = sub.add_parser("reproduce",
                       help="the paper's Tables 1, 2, 3 and 6 in miniature: train, evaluate, report")
    p.add_argument("--quick", action="store_true",
                   help="a step per row, on a tiny set (under a minute on a quiet 2-core machine)")
    p.add_argument("--seeds", type=_positive_int, default=None,
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
    p.add_argument("--jobs", type=_positive_int, default=1,
                   help="train this many runs at once, each with cores/JOBS threads (on 2 cores, 2 jobs "
                        "did about 1.45x the work per hour of 1; default 1)")
    p.add_argument("--report-only", action="store_true",
                   help="write the report of the runs finished so far; train nothing (safe while a study "
                        "runs in the same --work)")
    p.add_argument("--retrain-stale", action="store_true",
                   help="move runs made with another config than the code makes now to WORK/.../stale/ "
                        "and train them again (without it they stop the study; nothing is deleted)")
    p.add_argument("--device", default="auto", help=HELP["device"])


def _add_convert(sub) -> None:
    p = sub.add_parser("convert",
                       help="torchvision, detectron2 or mmdetection Faster R-CNN weights -> an fpn run")
    p.add_argument("weights", type=Path, help="a .pkl (detectron2 model zoo), .pth/.pt or .safetensors file "
                                              "(no pickled code is run)")
    p.add_argument("--output", type=Path, required=True, help="run directory to write")
    p.add_argument("--from", dest="library", choices=["torchvision", "detectron2", "mmdetection"],
                   default=None, help="the library that wrote the weights (default: recognised by key names)")


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="inference (or training) speed against torchvision on identical weights")
    p.add_argument("--train", action="store_true",
                   help="training steps instead: R50-FPN at 512 and 800 px, and the demo preset")
    p.add_argument("--repeats", type=_positive_int, default=None,
                   help="timed runs per row (default: 3, 5 with --train)")
    p.add_argument("--quick", action="store_true",
                   help="only the 512x512 input, small scaling tables at 512 px and no ONNX Runtime rows "
                        "(with --train: no 800 px row)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch threads (default: torch's choice)")
    p.add_argument("--output", type=Path, default=None, help="also write the Markdown report here")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "int8", "all"], default="all",
                   help="rows at this precision besides fp32 (default all: bf16 and int8, with --train "
                        "bf16; auto: the one this CPU would choose)")
    p.add_argument("--backend", choices=["all", "pytorch", "onnxruntime", "openvino"], default="all",
                   help="runtimes with rows besides PyTorch (default all: ONNX Runtime and OpenVINO, fp32 "
                        "and int8; not with --quick or --train)")


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="a checkpoint -> one ONNX graph (any image size) for ONNX Runtime, "
                       "or OpenVINO IR")
    _add_checkpoint(p)
    _add_overrides(p, "model.roi_heads.score_thresh=0.3")
    p.add_argument("--format", choices=["onnx", "openvino"], default="onnx",
                   help="onnx (default), or openvino: OpenVINO IR (NAME.xml, NAME.bin) from the same graph")
    p.add_argument("--output", type=Path, required=True, help="the .onnx (or OpenVINO .xml) file to write")
    p.add_argument("--precision", choices=["fp32", "int8"], default="fp32",
                   help="openvino only: int8 is NNCF post-training quantization (default fp32)")
    p.add_argument("--calibration", action="append", type=Path, default=None, metavar="PATH",
                   help=HELP["calibration"].format(""))
    p.add_argument("--verify-image", type=Path, default=None,
                   help="an image for the exported vs PyTorch check (default: a random one)")
    p.add_argument("--no-verify", action="store_true", help="skip the exported vs PyTorch check")


def _add_serve(sub) -> None:
    p = sub.add_parser(
        "serve", help="detection as a local web service and page (needs: pip install 'fpn[serve]')",
        description="Serve a detector over HTTP: POST /detect (multipart field 'image') returns JSON "
        "detections; GET /health; GET / is a page to drop an image on; the OpenAPI schema is at "
        "/openapi.json (docs at /docs). Requests queue for one model and are micro-batched.")
    _add_checkpoint(p)
    _add_overrides(p, "model.roi_heads.score_thresh=0.3")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8080, help="default 8080")
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="server processes; each loads its own copy of the model, so memory multiplies "
                   "(default 1: one model, requests queued to it)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch threads per worker (default: torch's choice, one per core; with several "
                   "workers give each cores/workers)")
    p.add_argument("--device", default="auto", help=HELP["device"])
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds a request may wait and run before a 503 (default 30)")
    p.add_argument("--hang-timeout", type=float, default=None,
                   help="seconds a forward pass may run before it is abandoned and a new worker thread "
                   "serves the queue (default: half of --timeout)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body (default 20 MiB)")
    p.add_argument("--max-megapixels", type=float, default=40.0,
                   help="largest image, checked from its header before decoding (default 40)")
    p.add_argument("--max-batch", type=_positive_int, default=4,
                   help="images run in one forward at most (default 4)")
    p.add_argument("--max-queue", type=_positive_int, default=16,
                   help="images that may wait; more get a 503 'busy' (default 16)")
    _add_precision(p)


def _add_presets(sub) -> None:
    sub.add_parser("presets", help="list the config presets")


PARSERS = [_add_synth, _add_train, _add_pretrain, _add_eval, _add_proposals, _add_predict, _add_browse,
           _add_demo, _add_reproduce, _add_convert, _add_bench, _add_export, _add_serve, _add_presets]


def build_parser() -> argparse.ArgumentParser:
    return _build()[0]


def _build() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser, and each command's own parser by name."""
    parser = argparse.ArgumentParser(prog="fpn", description="Feature Pyramid Networks for object detection.")
    parser.add_argument("--version", action="version", version=f"fpn {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in PARSERS:
        add(sub)
    return parser, dict(sub.choices)


# ---------------------------------------------------------------------------------------------
# overrides: one syntax on every command


def _takes_value(parser: argparse.ArgumentParser, token: str) -> bool:
    """Whether ``token`` is an option of ``parser`` that takes a value in the next token."""
    action = parser._option_string_actions.get(token)  # argparse keeps no public map of its options
    return action is not None and action.nargs != 0


def split_overrides(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], list[str]]:
    """(the arguments for argparse, the overrides in command-line order) of one command's arguments.

    An override is a ``key=value`` item under ``model.``, ``data.`` or ``train.`` anywhere (not the
    value of an option), or the value of ``--set``.
    """
    rest, overrides, i = [], [], 0
    while i < len(argv):
        token = argv[i]
        if token == "--set" and i + 1 < len(argv):
            overrides.append(argv[i + 1])
            i += 2
            continue
        if token.startswith("--set="):
            overrides.append(token.removeprefix("--set="))
        elif OVERRIDE.match(token):
            overrides.append(token)
        else:
            rest.append(token)
            if _takes_value(parser, token) and i + 1 < len(argv):
                rest.append(argv[i + 1])
                i += 1
        i += 1
    return rest, overrides


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line parsed, with every command's overrides in ``args.overrides`` (in order)."""
    parser, commands = _build()
    argv = list(sys.argv[1:] if argv is None else argv)
    at = next((i for i, token in enumerate(argv) if token in commands), None)
    if at is None or not any(action.dest == "overrides" for action in commands[argv[at]]._actions):
        return parser.parse_args(argv)
    rest, overrides = split_overrides(commands[argv[at]], argv[at + 1:])
    args = parser.parse_args([*argv[:at + 1], *rest])
    args.overrides = [*overrides, *args.overrides]  # argparse only saw items that are not overrides
    return args


# ---------------------------------------------------------------------------------------------
# handlers: one job each, then what it did


def _run_synth(args: argparse.Namespace, progress: bool) -> None:
    from fpn.data import synthetic

    stats = synthetic.generate(args.out_dir, num_train=args.train, num_val=args.val,
                               num_pretrain=args.pretrain, num_calibration=args.calibration,
                               image_size=args.image_size, seed=args.seed, variant=args.variant,
                               geometry=args.geometry, progress=progress)
    print(f"wrote {args.out_dir}: {stats}")


def _run_train(args: argparse.Namespace, progress: bool) -> None:
    from fpn.jobs.training import requested_config, run_train

    cfg = requested_config(args.config, args.overrides, args.output, resume=args.resume)
    cfg.train.init = [*cfg.train.init, *map(str, args.init)]
    result = run_train(cfg, args.output, resume=args.resume, overwrite=args.overwrite, progress=progress,
                       evaluate=not args.no_eval)
    if result["evaluation"] is not None:
        print(result["evaluation"].summary())
    print(f"trained {result['step']} steps in {result['seconds'] / 60:.1f} min; run in {args.output}")


def _run_eval(args: argparse.Namespace, progress: bool) -> None:
    from fpn.jobs.evaluation import run_eval

    result, out = run_eval(args.checkpoint, args.overrides, output=args.output, progress=progress,
                           precision=args.precision, calibration=args.calibration, backend=args.backend)
    print(result.summary())
    charts = [p for p in result.pictures if "/" not in p]
    worst = len(result.pictures) - len(charts)
    print(f"metrics in {out}" + (f", with {', '.join(charts) or 'no charts (pip install matplotlib)'} and "
                                 f"{worst} worst image(s) in worst/" if result.pictures else ""))


def _run_proposals(args: argparse.Namespace, progress: bool) -> None:
    from fpn.jobs.proposals import run_proposals

    result = run_proposals(args.checkpoint, args.split, args.output, args.overrides, progress=progress)
    print(f"wrote {result['path']}: proposals for {result['images']} {args.split} images"
          + (f" ({len(result['skipped'])} unreadable skipped)" if result["skipped"] else ""))


def _run_predict(args: argparse.Namespace, progress: bool) -> None:
    from fpn.jobs.prediction import run_predict

    summary = run_predict(args.checkpoint, args.inputs, args.output, score_thresh=args.score_thresh,
                          device=args.device, progress=progress, overrides=args.overrides,
                          colour_by=args.colour_by, precision=args.precision, calibration=args.calibration,
                          backend=args.backend)
    print(f"wrote {summary.describe()}")


def _run_browse(args: argparse.Namespace, progress: bool) -> int | None:
    from fpn.jobs.browse import check_dataset, run_browse

    if args.check:
        report = check_dataset(args.data, images=args.images, split=args.split, config=args.config)
        print(report.text())
        return 0 if report.clean else 1
    if args.output is None:
        raise ConfigError("fpn browse: --output DIR is needed for the pictures and charts (or --check)")
    summary = run_browse(args.data, args.output, images=args.images, split=args.split, config=args.config,
                         num_images=args.num_images, colour_by=args.colour_by)
    print(summary.text())
    charts = ", ".join(summary.charts) or "no charts (pip install matplotlib)"
    print(f"wrote {len(summary.drawn)} drawn images in {args.output / 'gt'}, {charts} and summary.json "
          f"in {args.output}")


def _run_demo(args: argparse.Namespace, progress: bool) -> None:
    from fpn.jobs.demo import run_demo

    run_demo(args.output, overrides=args.overrides, progress=progress, overwrite=args.overwrite)


def _run_pretrain(args: argparse.Namespace, progress: bool) -> None:
    from fpn.config.files import load_config
    from fpn.jobs.pretraining import describe, run_pretrain

    result = run_pretrain(load_config(args.config, args.overrides), args.output, progress=progress)
    print(f"{describe(result)}; backbone in {args.output} (use it with fpn train --init {args.output})")


def _run_reproduce(args: argparse.Namespace, progress: bool) -> None:
    if args.calibrate:
        from fpn.reproduction.calibrate import run_calibration

        if args.report_only:
            raise ConfigError("--report-only writes the study's report; it cannot be given with --calibrate")
        run_calibration(args.calibrate, data_seed=args.data_seed, output=args.output, work=args.work,
                        device=args.device, quick=args.quick, retrain_stale=args.retrain_stale)
        return
    from fpn.reproduction.study import run_reproduction

    rows = tuple(name for name in args.rows.split(",") if name)
    run_reproduction(quick=args.quick, seeds=args.seeds, data_seed=args.data_seed, output=args.output,
                     work=args.work, device=args.device, only=rows, jobs=args.jobs,
                     retrain_stale=args.retrain_stale, report_only=args.report_only)


def _run_convert(args: argparse.Namespace, progress: bool) -> None:
    from fpn.jobs.conversion import run_convert

    description, path = run_convert(args.weights, args.output, library=args.library)
    print(f"{description}; wrote {path}: use {args.output} with fpn predict / fpn eval")


def _run_bench(args: argparse.Namespace, progress: bool) -> None:
    from fpn.bench import inference, training
    from fpn.bench.common import publish_report

    run = training.run if args.train else inference.run
    options = {} if args.train else {"backend": args.backend}
    report = run(repeats=args.repeats or (5 if args.train else 3), quick=args.quick, threads=args.threads,
                 precision=args.precision, **options)
    publish_report(report, args.output)


def _run_export(args: argparse.Namespace, progress: bool) -> None:
    from fpn.jobs.export import run_export

    print(f"exporting to {args.output} (tracing the eval path; about half a minute)", flush=True)
    report = run_export(args.checkpoint, args.output, overrides=args.overrides,
                        verify_outputs=not args.no_verify, verify_image=args.verify_image,
                        format=args.format, precision=args.precision, calibration=args.calibration)
    print("\n".join(report.lines()))


def _run_serve(args: argparse.Namespace, progress: bool) -> None:
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise MissingExtraError(f"fpn serve needs the serve extra: pip install 'fpn[serve]' ({err})"
                                ) from None
    from fpn.serve.app import ServeSettings
    from fpn.serve.server import ServeOptions, serve

    limits = ServeSettings(max_upload_mb=args.max_upload_mb, max_megapixels=args.max_megapixels,
                           timeout=args.timeout, max_batch=args.max_batch, max_queue=args.max_queue,
                           hang_timeout=args.hang_timeout)
    serve(ServeOptions(str(args.checkpoint), host=args.host, port=args.port, workers=args.workers,
                       device=args.device, threads=args.threads, overrides=args.overrides, limits=limits,
                       precision=args.precision, calibration=[str(path) for path in args.calibration or []],
                       backend=args.backend))


def _run_presets(args: argparse.Namespace, progress: bool) -> None:
    from fpn.config.files import preset_descriptions

    width = max(map(len, descriptions := preset_descriptions()), default=0)
    print("\n".join(f"{name:<{width}}  {text}" for name, text in descriptions.items()))


HANDLERS: dict[str, Callable[[argparse.Namespace, bool], int | None]] = {
    "synth": _run_synth, "train": _run_train, "pretrain": _run_pretrain, "eval": _run_eval,
    "proposals": _run_proposals,
    "predict": _run_predict, "browse": _run_browse, "demo": _run_demo, "reproduce": _run_reproduce,
    "convert": _run_convert, "bench": _run_bench, "export": _run_export, "serve": _run_serve,
    "presets": _run_presets,
}


def run(args: argparse.Namespace) -> int:
    """Run the parsed command; 0 when it succeeded (a failure raises), or the exit code it returns
    (``fpn browse --check``: 1 when the dataset has problems)."""
    return HANDLERS[args.command](args, not args.quiet) or 0


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("fpn").setLevel(logging.DEBUG if args.debug else logging.INFO)
    if args.command is None:
        build_parser().print_help()
        return 0
    try:
        return run(args)
    except KeyboardInterrupt as err:
        print(f"fpn {args.command}: interrupted{': ' + str(err) if str(err) else ''}", file=sys.stderr)
        return 130
    except UserError as err:
        if args.debug:
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"fpn {args.command}: error: {message}", file=sys.stderr)
        return 2
    except Exception as err:  # a bug: its traceback is what a report needs
        traceback.print_exc()
        print(f"fpn {args.command}: unexpected {type(err).__name__} (a bug in fpn, not in your input; "
              "please report it with the traceback above)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
