"""The main job on the built-in synthetic benchmark: synthesise, train a CPU-sized FPN, evaluate, draw."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fpn.config.files import load_config
from fpn.config.schema import Config
from fpn.data import synthetic
from fpn.engine.run_folder import holds_a_run
from fpn.hardware import resolve_device
from fpn.jobs.prediction import run_predict
from fpn.jobs.training import run_train

# The demo's synthetic benchmark: 600 training and 100 validation images of 256 x 256 pixels.
DEMO_TRAIN_IMAGES, DEMO_VAL_IMAGES, DEMO_IMAGE_SIZE = 600, 100, 256
DRAWN_IMAGES = 6  # validation images drawn with their detections at the end


def run_demo(out_dir: str | Path = "runs/demo", *, overrides: list[str] | None = None,
             progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Generate the data if missing, train the ``demo`` preset (resuming the run in ``out_dir``, or
    starting it over with ``overwrite``), evaluate and draw."""
    out_dir = Path(out_dir)
    start = time.perf_counter()
    cfg = load_config("demo", overrides)
    data_dir = Path(cfg.data.train_images).parent.parent
    if not (data_dir / "val" / "annotations.json").is_file():
        print(f"generating the synthetic benchmark in {data_dir}")
        synthetic.generate(data_dir, **demo_synth_args(cfg), progress=progress)
    print(f"training the demo preset on {resolve_device(cfg.train.device)} for {cfg.train.max_iter} "
          f"iterations (batch {cfg.train.batch_size}); logs in {out_dir}")
    resume = holds_a_run(out_dir) and not overwrite
    result = run_train(cfg, out_dir, resume=resume, overwrite=overwrite, progress=progress)
    print(result["evaluation"].summary())
    drawn = run_predict(out_dir, sorted(Path(cfg.data.val_images).glob("*.png"))[:DRAWN_IMAGES],
                        out_dir / "predictions", progress=False).out_dir
    seconds = time.perf_counter() - start
    summary = {"seconds": seconds, "metrics": result["evaluation"].metrics}
    (out_dir / "demo_summary.json").write_text(json.dumps(summary, indent=1))
    print(f"demo finished in {seconds / 60:.1f} min; images with detections drawn in {drawn / 'drawn'}")
    return summary


def demo_synth_args(cfg: Config) -> dict[str, Any]:
    return {"num_train": DEMO_TRAIN_IMAGES, "num_val": DEMO_VAL_IMAGES, "image_size": DEMO_IMAGE_SIZE,
            "seed": cfg.train.seed}
