"""``fpn serve``: load the detector, build the app, run it under uvicorn.

With ``workers == 1`` (the default) the detector is loaded here, before the server starts, so a
bad path or config fails in one line. With more, uvicorn starts that many processes and each
builds the app (and loads its own model copy: memory multiplies) from ``FPN_SERVE_OPTIONS``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from fpn.errors import ConfigError
from fpn.serve.app import ServeSettings, build_app

OPTIONS_ENV = "FPN_SERVE_OPTIONS"


@dataclass
class ServeOptions:
    """What ``fpn serve`` was asked for: the model, where to listen, and the limits."""

    checkpoint: str
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    device: str = "auto"
    threads: int | None = None  # torch intra-op threads per worker (default: torch's choice)
    overrides: list[str] = field(default_factory=list)
    limits: ServeSettings = field(default_factory=ServeSettings)
    precision: str = "auto"  # fpn.model.precision
    calibration: list[str] = field(default_factory=list)  # int8: images to calibrate on
    backend: str = "pytorch"  # or openvino (fpn.export_openvino)


def load_detector(options: ServeOptions):
    """The run's detector, or a one-line ConfigError if it cannot serve boxes."""
    import torch

    from fpn.api import Detector

    if options.threads:
        torch.set_num_threads(options.threads)
    detector = Detector.from_checkpoint(options.checkpoint, options.device, options.overrides,
                                        precision=options.precision, calibration=options.calibration or None,
                                        backend=options.backend)
    model = detector.model
    if model.roi_heads is None:
        raise ConfigError(f"{options.checkpoint}: fpn serve needs a detector with a box head; this run is "
                         f"{'segment proposals' if model.segment_proposals is not None else 'the RPN alone'}")
    if model.rpn is None:
        raise ConfigError(f"{options.checkpoint}: fpn serve needs a detector with an RPN; this run reads "
                         "given proposals (model.proposals=given)")
    return detector


def app_from_environment():
    """uvicorn's app factory in each worker process (``--workers`` above 1)."""
    raw = json.loads(os.environ[OPTIONS_ENV])
    options = ServeOptions(**{**raw, "limits": ServeSettings(**raw["limits"])})
    return build_app(load_detector(options), options.limits)


def serve(options: ServeOptions) -> None:
    """Run until interrupted (Ctrl-C)."""
    import uvicorn

    if options.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {options.workers}")
    from fpn.engine.checkpoint import find_checkpoint

    find_checkpoint(Path(options.checkpoint))  # a wrong path: one line, before anything starts
    common = {"host": options.host, "port": options.port, "log_level": "info", "timeout_graceful_shutdown": 5}
    if options.workers == 1:
        uvicorn.run(build_app(load_detector(options), options.limits), **common)
        return
    os.environ[OPTIONS_ENV] = json.dumps(dataclasses.asdict(options))
    uvicorn.run("fpn.serve.server:app_from_environment", factory=True, workers=options.workers, **common)
