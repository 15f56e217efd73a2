"""``fpn serve``: detection as a local web service (``fpn.serve``; the serve extra)."""

from __future__ import annotations

import argparse

from fpn.cli.options import HELP, add_checkpoint, add_overrides, add_precision, positive_int
from fpn.errors import MissingExtraError

NAME = "serve"


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME, help="detection as a local web service and page (needs: pip install 'fpn[serve]')",
        description="Serve a detector over HTTP: POST /detect (multipart field 'image') returns JSON "
        "detections; GET /health; GET / is a page to drop an image on; the OpenAPI schema is at "
        "/openapi.json (docs at /docs). Requests queue for one model and are micro-batched.")
    add_checkpoint(p)
    add_overrides(p, "model.roi_heads.score_thresh=0.3")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8080, help="default 8080")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="server processes; each loads its own copy of the model, so memory multiplies "
                   "(default 1: one model, requests queued to it)")
    p.add_argument("--threads", type=positive_int, default=None,
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
    p.add_argument("--max-batch", type=positive_int, default=4,
                   help="images run in one forward at most (default 4)")
    p.add_argument("--max-queue", type=positive_int, default=16,
                   help="images that may wait; more get a 503 'busy' (default 16)")
    add_precision(p)


def run(args: argparse.Namespace, progress: bool) -> None:
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
