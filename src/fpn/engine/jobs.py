"""The jobs behind the command line: train, evaluate, predict, demo.

Each is a plain function of a typed config and paths, so a notebook can call it too.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Subset

from fpn.config import Config, DataConfig, load_config
from fpn.engine import distributed
from fpn.engine import evaluate as ev
from fpn.engine.train import resolve_device, train

log = logging.getLogger(__name__)


class TrainingStopped(KeyboardInterrupt):
    """Training was stopped by SIGINT/SIGTERM after its checkpoint was written."""


def build_dataset(data: DataConfig, split: str):
    """The train or val dataset the config names (COCO format or Pascal VOC)."""
    from fpn.data import CocoDetection, VOCDetection

    match data.format:
        case "coco":
            images = data.train_images if split == "train" else data.val_images
            annotations = data.train_annotations if split == "train" else data.val_annotations
            for path in (images, annotations):
                if not Path(path).exists():
                    raise FileNotFoundError(f"{path}: not found (data.{split}_* in the config; "
                                            "`fpn synth DIR` makes the built-in benchmark)")
            return CocoDetection(images, annotations)
        case "voc":
            return VOCDetection(data.voc_root, split=split)
    raise ValueError(f"unknown data format {data.format!r}")


def with_dataset_classes(cfg: Config, dataset) -> Config:
    """Set the number of classes and their names and ids from the training set."""
    names = list(dataset.class_names)
    cfg.model.roi_heads.num_classes = len(names)
    cfg.model.class_names = names
    cfg.model.category_ids = [int(dataset.label_to_category_id[i + 1]) for i in range(len(names))]
    return cfg


def label_to_category_id(cfg: Config) -> dict[int, int]:
    return {i + 1: cid for i, cid in enumerate(cfg.model.category_ids)}


def val_loader(dataset, batch_size: int = 2, workers: int = 0) -> DataLoader:
    """In order; under torchrun, rank r takes images r, r + world_size, ..."""
    from fpn.data import collate_fn

    dist = distributed.info()
    if dist.enabled:
        dataset = Subset(dataset, range(dist.rank, len(dataset), dist.world_size))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=collate_fn)


def evaluate_model(model, dataset, cfg: Config, *, progress: bool = True) -> dict[str, Any]:
    """Box AP and proposal AR of ``model`` on ``dataset`` through pycocotools."""
    was_training = model.training
    model.eval()
    metrics = ev.evaluate_detector(
        model, val_loader(dataset, workers=min(2, cfg.data.num_workers)), coco_ground_truth(dataset),
        label_to_category_id(cfg), with_proposals=True, device=next(model.parameters()).device,
        progress=progress,
    )
    model.train(was_training)
    return metrics


def coco_ground_truth(dataset):
    """What pycocotools evaluates against: the COCO file, or VOC converted to COCO."""
    if hasattr(dataset, "coco_gt"):
        return dataset.coco_gt()
    return dataset.to_coco_dict()


def run_train(cfg: Config, out_dir: str | Path, *, resume: bool = False, progress: bool = True,
              evaluate: bool = True) -> dict[str, Any]:
    """Train on ``cfg.data``, evaluate on its val split at the end (and every eval_period)."""
    out_dir = Path(out_dir)
    train_set = build_dataset(cfg.data, "train")
    cfg = with_dataset_classes(cfg, train_set)
    val_set = build_dataset(cfg.data, "val") if evaluate else None
    final: dict[str, Any] = {}

    def evaluate_fn(model, step):
        metrics = evaluate_model(model, val_set, cfg, progress=progress)
        if distributed.info().is_main:
            ev.save_metrics(metrics, out_dir / "eval" / f"step_{step:07d}")
        final.clear()
        final.update(metrics)
        return {k: v for k, v in metrics.items() if isinstance(v, float)}

    result = train(cfg, train_set, out_dir, resume=resume, progress=progress,
                   evaluate_fn=evaluate_fn if evaluate else None)
    if result["stopped"]:
        raise TrainingStopped(f"stopped at step {result['step']} after writing a checkpoint; "
                              f"continue with: fpn train --resume --output {out_dir} ...")
    result["metrics"] = final
    return result


def run_predict(checkpoint: str | Path, inputs: list[str | Path], out_dir: str | Path, *,
                score_thresh: float = 0.3, device: str = "auto", progress: bool = True) -> Path:
    """Detections for images and folders -> ``predictions.json`` (COCO style) and drawn copies."""
    from tqdm import tqdm

    from fpn.api import Detector, ImageReadError, load_image
    from fpn.visualize import save_drawn, to_pil

    detector = Detector.from_checkpoint(checkpoint, device)
    paths = expand_inputs(inputs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records, failed = [], []
    category_ids = detector.model.cfg.category_ids
    for path in tqdm(paths, desc="predict", disable=not progress):
        try:
            image = load_image(path)
        except ImageReadError as err:
            log.warning("skipped: %s", err)
            failed.append(str(path))
            continue
        det = detector(image)
        for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(),
                                     det["labels"].tolist(), strict=True):
            records.append({"file_name": str(path),
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                            "score": score,
                            "category_id": category_ids[label - 1] if category_ids else label,
                            "category_name": detector.label_name(label)})
        save_drawn(to_pil(image), det, out_dir / "drawn" / f"{Path(path).stem}.png",
                   detector.class_names, score_thresh)
    (out_dir / "predictions.json").write_text(json.dumps(records, indent=1))
    if failed:
        log.warning("%d of %d images could not be read: %s", len(failed), len(paths), failed[:5])
    return out_dir


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    paths = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.exists():
            paths.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    if not paths:
        raise FileNotFoundError(f"no images found in {[str(i) for i in inputs]}")
    return paths


def run_demo(out_dir: str | Path = "runs/demo", *, overrides: list[str] | None = None,
             progress: bool = True) -> dict[str, Any]:
    """The main job on the embedded default: synthesise, train a CPU-sized FPN, evaluate, draw."""
    from fpn.data import synthetic

    out_dir = Path(out_dir)
    start = time.perf_counter()
    cfg = load_config("demo", overrides)
    data_dir = Path(cfg.data.train_images).parent.parent
    if not (data_dir / "val" / "annotations.json").is_file():
        print(f"generating the synthetic benchmark in {data_dir}")
        synthetic.generate(data_dir, **_demo_synth_args(cfg), progress=progress)
    print(f"training the demo preset on {resolve_device(cfg.train.device)} for {cfg.train.max_iter} "
          f"iterations (batch {cfg.train.batch_size}); logs in {out_dir}")
    result = run_train(cfg, out_dir, resume=(out_dir / "checkpoints").is_dir(), progress=progress)
    metrics = result["metrics"]
    print(ev.format_table(metrics))
    drawn = run_predict(out_dir, sorted(Path(cfg.data.val_images).glob("*.png"))[:6],
                        out_dir / "predictions", progress=False)
    seconds = time.perf_counter() - start
    summary = {"seconds": seconds, "metrics": {k: v for k, v in metrics.items() if isinstance(v, float)}}
    (out_dir / "demo_summary.json").write_text(json.dumps(summary, indent=1))
    print(f"demo finished in {seconds / 60:.1f} min; images with detections drawn in {drawn / 'drawn'}")
    return summary


def _demo_synth_args(cfg: Config) -> dict[str, Any]:
    return {"num_train": 600, "num_val": 100, "image_size": 256, "seed": cfg.train.seed}

